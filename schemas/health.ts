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

export const Readiness = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  checks: Type.Record(Type.String(), Type.Object({ ok: Type.Boolean(), detail: Type.Optional(Type.String()) }))
})
