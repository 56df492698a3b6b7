import { Type, type Static } from '@sinclair/typebox'
import { NO_NUL_PATTERN, Timestamp, Uuid } from './common.ts'

export const Email = Type.String({ format: 'email', maxLength: 320, examples: ['ada@acme.test'] })
export const UserName = Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL_PATTERN, examples: ['Ada Lovelace'] })

export const MemberRole = Type.Union([Type.Literal('admin'), Type.Literal('member')], {
  description: '`admin` members may invite, change and remove the members of their tenant; `member` users may not'
})
export type MemberRole = Static<typeof MemberRole>

export const User = Type.Object(
  {
    id: Uuid,
    email: Email,
    name: UserName,
    role: MemberRole,
    status: Type.Union([Type.Literal('inviting'), Type.Literal('active')], {
      description: '`inviting`: the user pool side of an invitation is not finished; repeat the invitation to finish it'
    }),
    sub: Type.Union([Type.String(), Type.Null()], { description: "The user pool user's `sub`; null for a user the pool does not hold" }),
    createdAt: Timestamp,
    updatedAt: Timestamp
  },
  { $id: 'User' }
)
export type User = Static<typeof User>

/** A temporary password for the invitation; Cognito makes one up when it is absent. */
const TemporaryPassword = Type.String({ minLength: 6, maxLength: 256, pattern: '^\\S+$' })

export const CreateUserBody = Type.Object(
  {
    email: Email,
    name: UserName,
    role: Type.Optional(MemberRole),
    invite: Type.Optional(
      Type.Boolean({
        description:
          'Also create the user in the Cognito user pool (with custom:tenant_id set to this tenant) and record its sub. Repeating an unfinished invitation finishes it.'
      })
    ),
    temporaryPassword: Type.Optional(TemporaryPassword)
  },
  { additionalProperties: false }
)
export type CreateUserBody = Static<typeof CreateUserBody>

export const UpdateUserBody = Type.Object(
  { email: Type.Optional(Email), name: Type.Optional(UserName), role: Type.Optional(MemberRole) },
  { additionalProperties: false, minProperties: 1 }
)
export type UpdateUserBody = Static<typeof UpdateUserBody>
