import { Type } from '@sinclair/typebox'

export const TenantHealth = Type.Object({
  status: Type.Literal('ok'),
  tenant: Type.String(),
  schema: Type.String(),
  database: Type.Object({
    currentSchema: Type.String({ description: 'current_schema() as seen through the tenant-scoped client' }),
    latencyMs: Type.Number()
  })
})

export const Liveness = Type.Object({ status: Type.Literal('ok') })

const Version = Type.Integer({ minimum: 0 })

export const MigrationReport = Type.Object({
  controlPlane: Type.Object(
    { version: Version, latest: Version },
    { description: 'The control plane (public) schema: applied version and the latest this build ships. Behind fails readiness.' }
  ),
  tenants: Type.Object(
    {
      latest: Version,
      behind: Type.Integer({ minimum: 0, description: 'Tenants whose schema_version is below latest' })
    },
    { description: 'Tenant schemas against the latest tenant migration. Reported only: it never fails readiness.' }
  )
})

export const ReadinessQuery = Type.Object({
  verbose: Type.Optional(Type.String({ description: 'Present (any value, `?verbose` alone included): the checks and the migrations, to an admin token' }))
})

export const Readiness = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  checks: Type.Optional(
    Type.Record(Type.String(), Type.Object({ ok: Type.Boolean(), detail: Type.Optional(Type.String()) }), {
      description: 'Each dependency check: for admin tokens, and on METRICS_PORT with ?verbose'
    })
  ),
  migrations: Type.Optional(MigrationReport),
  requestId: Type.Optional(Type.String({ description: 'On 503 answers, as on every 5xx: the request id (also sent as X-Request-Id), to find its log lines' }))
})
