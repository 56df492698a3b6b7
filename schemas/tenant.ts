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

/** Requests counted in one window of time: `[from, to)`. */
const RequestWindow = Type.Object({
  from: Timestamp,
  to: Timestamp,
  requests: Type.Integer({ minimum: 0 })
})

/**
 * What one tenant uses. Requests are those of callers holding a token bound to the tenant, counted
 * per hour (UTC); the rest is read from the database when asked.
 */
export const TenantUsage = Type.Object(
  {
    tenant: TenantId,
    at: Type.String({ format: 'date-time', description: 'When the figures were read' }),
    requests: Type.Object(
      {
        currentHour: RequestWindow,
        lastHour: RequestWindow,
        currentDay: RequestWindow,
        lastDay: RequestWindow
      },
      {
        description:
          'Requests to tenant routes by callers whose token is bound to this tenant (an admin’s requests and the tokenless `GET /` are not counted). Hours and days are UTC. Counted in memory by each instance and written every USAGE_FLUSH_INTERVAL_MS: what other instances counted in their last interval may be missing.'
      }
    ),
    storage: Type.Object(
      {
        files: Type.Integer({ minimum: 0, description: 'Files whose upload is complete' }),
        bytes: Type.Integer({ minimum: 0, description: 'Their total size' })
      },
      { description: 'Uploaded files (pending uploads are not counted)' }
    ),
    database: Type.Object(
      {
        bytes: Type.Integer({
          minimum: 0,
          description: "On-disk size of the tenant's schema: every table with its indexes and TOAST, and every sequence"
        })
      },
      { description: "The tenant's PostgreSQL schema" }
    ),
    users: Type.Integer({ minimum: 0, description: 'Users in the tenant' })
  },
  { $id: 'TenantUsage' }
)
export type TenantUsage = Static<typeof TenantUsage>
