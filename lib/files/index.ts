/**
 * Files of a tenant: object keys and names (built here and nowhere else, DESIGN §6 layer 4), the
 * rows of its `files` table, the S3 operations on the bucket, and the sweep that removes what no
 * file can reach.
 */
export {
  checkUpload,
  claimCompletion,
  cleanFilename,
  contentDisposition,
  createPendingFile,
  deleteTenantObjects,
  fileIdOfKey,
  fileKey,
  findFileRow,
  getFile,
  isTenantKey,
  keySafeName,
  listFiles,
  markDeleted,
  markUploaded,
  newFileId,
  releaseCompletion,
  stagingKey,
  tenantPrefix,
  toFile,
  type FileRow,
  type LiveFileRow,
  type UploadLimits,
  type UploadRequest
} from './files.ts'
export { DEFAULT_SWEEP_GRACE_MS, requestSweep, sweepDue, type SweepOptions, type SweepSummary } from './sweep.ts'
export { createStorage, storageError, type Storage, type StorageOptions } from './storage.ts'
