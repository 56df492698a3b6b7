import { Type, type Static } from '@sinclair/typebox'
import { TenantId, Timestamp } from './common.ts'

export const TenantStatus = Type.Union([Type.Literal('active'), Type.Literal('suspended')])
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

const TenantName = Type.String({ minLength: 1, maxLength: 200 })

export const CreateTenantBody = Type.Object({ id: TenantId, name: TenantName }, { additionalProperties: false })
export type CreateTenantBody = Static<typeof CreateTenantBody>

export const UpdateTenantBody = Type.Object(
  { name: Type.Optional(TenantName), status: Type.Optional(TenantStatus) },
  { additionalProperties: false, minProperties: 1 }
)
export type UpdateTenantBody = Static<typeof UpdateTenantBody>

export const TenantParams = Type.Object({ id: Type.String({ maxLength: 100 }) })
