import { Type, type Static, type TSchema } from '@sinclair/typebox'

/** Tenant ids are schema names: lowercase, 3–63 characters, no leading digit or trailing hyphen. */
export const TENANT_ID_PATTERN = '^[a-z][a-z0-9-]{1,61}[a-z0-9]$'

export const TenantId = Type.String({
  pattern: TENANT_ID_PATTERN,
  minLength: 3,
  maxLength: 63,
  description: 'Tenant slug; also the name of its PostgreSQL schema',
  examples: ['acme-corp']
})

/** The tenant header, documented on every tenant-scoped route. */
export const TenantHeaders = Type.Object({
  'x-tenant-id': Type.String({ pattern: TENANT_ID_PATTERN, description: 'The tenant this request acts on', examples: ['acme-corp'] })
})

/** PostgreSQL text cannot hold the NUL character: a name carrying one is refused here, as a 400. */
export const NO_NUL_PATTERN = '^[^\\u0000]*$'

export const Uuid = Type.String({ format: 'uuid', examples: ['0b6c1c4e-3b8a-4d5e-9f7a-2d1c0e9b8a76'] })
export const IdParams = Type.Object({ id: Uuid })
export type IdParams = Static<typeof IdParams>

export const Timestamp = Type.String({ format: 'date-time' })

export const PageQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  cursor: Type.Optional(Type.String({ maxLength: 200, description: 'nextCursor from the previous page' }))
})
export type PageQuery = Static<typeof PageQuery>

/** `{items, nextCursor}`: keyset pagination, nextCursor is null on the last page. */
export const Page = <T extends Parameters<typeof Type.Array>[0]>(item: T) =>
  Type.Object({ items: Type.Array(item), nextCursor: Type.Union([Type.String(), Type.Null()]) })

/** A reference to a shared schema (one with an `$id`) that keeps its static type. */
export const ref = <T extends TSchema>(schema: T) => Type.Unsafe<Static<T>>(Type.Ref(schema.$id as string))
