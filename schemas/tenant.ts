import { Type, type Static } from '@sinclair/typebox'
import { NO_NUL_PATTERN, TenantId, Timestamp } from './common.ts'

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

const TenantName = Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL_PATTERN })

export const CreateTenantBody = Type.Object({ id: TenantId, name: TenantName }, { additionalProperties: false })
export type CreateTenantBody = Static<typeof CreateTenantBody>

export const UpdateTenantBody = Type.Object(
  { name: Type.Optional(TenantName), status: Type.Optional(SettableTenantStatus) },
  { additionalProperties: false, minProperties: 1 }
)
export type UpdateTenantBody = Static<typeof UpdateTenantBody>

export const TenantParams = Type.Object({ id: Type.String({ maxLength: 100 }) })
