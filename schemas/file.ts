import { Type, type Static } from '@sinclair/typebox'
import { ref, Timestamp, Uuid } from './common.ts'

export const FileStatus = Type.Union([Type.Literal('pending'), Type.Literal('uploaded')], {
  description: '`pending` until the client uploaded the bytes and called `/complete`'
})
export type FileStatus = Static<typeof FileStatus>

/**
 * `type/subtype` with RFC 6838 restricted names and no parameters. The top-level type is further
 * limited to those that describe content (`ALLOWED_TOP_LEVEL_TYPES`); subtypes are not listed,
 * because downloads are always served as attachments and so nothing stored is ever rendered.
 */
export const CONTENT_TYPE_PATTERN = '^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$'
export const ALLOWED_TOP_LEVEL_TYPES = ['application', 'audio', 'font', 'image', 'model', 'text', 'video']

export const File = Type.Object(
  {
    id: Uuid,
    filename: Type.String({ description: "The client's file name, NFKC-normalised, without control or bidirectional-override characters" }),
    contentType: Type.String({ examples: ['application/pdf'] }),
    size: Type.Integer({ minimum: 1, description: 'Bytes' }),
    status: FileStatus,
    createdAt: Timestamp,
    updatedAt: Timestamp
  },
  { $id: 'File' }
)
export type File = Static<typeof File>

export const CreateFileBody = Type.Object(
  {
    filename: Type.String({ minLength: 1, maxLength: 1024, examples: ['report.pdf'] }),
    contentType: Type.String({ pattern: CONTENT_TYPE_PATTERN, maxLength: 255, examples: ['application/pdf'] }),
    size: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: 'Exact size of the upload in bytes', examples: [48213] })
  },
  { additionalProperties: false }
)
export type CreateFileBody = Static<typeof CreateFileBody>

export const UploadInstructions = Type.Object({
  method: Type.Literal('PUT'),
  url: Type.String({ description: 'Presigned URL; valid until expiresAt' }),
  headers: Type.Record(Type.String(), Type.String(), {
    description: 'Send exactly these headers with the PUT: they are part of the signature'
  }),
  expiresAt: Timestamp
})
export type UploadInstructions = Static<typeof UploadInstructions>

export const CreatedFile = Type.Object({ file: ref(File), upload: UploadInstructions })

export const Download = Type.Object({
  url: Type.String({ description: 'Presigned GET; the response carries Content-Disposition: attachment with the file name' }),
  expiresAt: Timestamp
})
export type Download = Static<typeof Download>
