import { Type, type Static } from '@sinclair/typebox'
import { NO_NUL_PATTERN, Timestamp, Uuid } from './common.ts'

const Email = Type.String({ format: 'email', maxLength: 320, examples: ['ada@acme.test'] })
const UserName = Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL_PATTERN, examples: ['Ada Lovelace'] })

export const User = Type.Object({ id: Uuid, email: Email, name: UserName, createdAt: Timestamp, updatedAt: Timestamp }, { $id: 'User' })
export type User = Static<typeof User>

export const CreateUserBody = Type.Object({ email: Email, name: UserName }, { additionalProperties: false })
export type CreateUserBody = Static<typeof CreateUserBody>

export const UpdateUserBody = Type.Object({ email: Type.Optional(Email), name: Type.Optional(UserName) }, { additionalProperties: false, minProperties: 1 })
export type UpdateUserBody = Static<typeof UpdateUserBody>
