import { Type, type Static } from '@sinclair/typebox'
import { NO_NUL_PATTERN, ref, TenantId, Timestamp } from './common.ts'
import { Email, User, UserName } from './user.ts'

/** What PATCH may set. */
export const SettableTenantStatus = Type.Union([Type.Literal('active'), Type.Literal('suspended')])

/** `deleting`: its files are being removed and its schema is about to go; it refuses requests. */
export const TenantStatus = Type.Union([Type.Literal('active'), Type.Literal('suspended'), Type.Literal('deleting')])
export type TenantStatus = Static<typeof TenantStatus>

export const Tenant = Type.Object(
  {
    id: TenantId,
    name: Type.String(),
    schema: Type.String({ description: 'The PostgreSQL schema holding this tenant' }),
    status: TenantStatus,
    schemaVersion: Type.Integer({ description: 'Latest tenant migration applied to the schema' }),
    createdAt: Timestamp,
    updatedAt: Timestamp
  },
  { $id: 'Tenant' }
)
export type Tenant = Static<typeof Tenant>

/** POST /auth/tenants answers the tenant, and its first member when one was asked for. */
export const CreatedTenant = Type.Object({ ...Tenant.properties, admin: Type.Optional(ref(User)) })

const TenantName = Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL_PATTERN })

export const CreateTenantBody = Type.Object(
  {
    id: TenantId,
    name: TenantName,
    admin: Type.Optional(
      Type.Object(
        { email: Email, name: UserName },
        {
          additionalProperties: false,
          description:
            "The tenant's first member, with role admin, invited into the Cognito user pool. Repeating the request finishes an invitation that failed part-way."
        }
      )
    )
  },
  { additionalProperties: false }
)
export type CreateTenantBody = Static<typeof CreateTenantBody>

export const UpdateTenantBody = Type.Object(
  { name: Type.Optional(TenantName), status: Type.Optional(SettableTenantStatus) },
  { additionalProperties: false, minProperties: 1 }
)
export type UpdateTenantBody = Static<typeof UpdateTenantBody>

export const TenantParams = Type.Object({ id: Type.String({ maxLength: 100 }) })
