/**
 * Files of a tenant: object keys and names (built here and nowhere else, DESIGN §6 layer 4), the
 * rows of its `files` table, and the S3 operations on the bucket.
 */
export {
  cleanFilename,
  contentDisposition,
  createPendingFile,
  deleteFileRow,
  deleteTenantObjects,
  fileKey,
  getFile,
  isTenantKey,
  keySafeName,
  listFiles,
  markUploaded,
  tenantPrefix,
  toFile,
  type FileRow,
  type UploadLimits
} from './files.ts'
export { createStorage, storageError, type Storage, type StorageOptions } from './storage.ts'
