/**
 * What the bench loads: each case is a route, how a request to it is built for a tenant, and how
 * its answer is checked. bench/README.md describes them.
 */
import type { TestIssuer } from '../test/helpers/issuer.ts'
import type { BenchTenant } from './database.ts'
import type { Picker, RequestSpec } from './load.ts'

/** Tokens outlive the longest run. */
export const TOKEN_LIFETIME_S = 24 * 3600

export interface CaseDef {
  key: string
  label: string
  /** Served by the bare Fastify + pg process (bench/bare-floor.ts) rather than the service. */
  bareProcess?: boolean
  /** Served by a second service reaching the database through PgBouncer in transaction mode. */
  pooled?: boolean
  /** The case this one is divided by: the same query on the service's pool, without tenant context. */
  floor?: string
  /** The bare process's counterpart of this case, which it is divided by too. */
  bare?: string
  request(tenant: BenchTenant): RequestSpec
  /** Why one answer (status 200) is wrong, or null. */
  check(tenant: BenchTenant, body: any, spec: RequestSpec): string | null
}

/** A process the load goes to. */
export interface Server {
  url: string
  pid: number
}

/** A case as one phase loads it: over which tenants, picked how, against which process. */
export interface PhaseCase {
  def: CaseDef
  tenants: BenchTenant[]
  pick: Picker
  distribution: string
  server: Server
}

/**
 * The cases a to e. Tokens and headers are built once per tenant (`tokenOf` mints a tenant's
 * token on first use) so that the load generator only picks them.
 */
export function benchCases(issuer: TestIssuer, tenantClaim: string) {
  const tokenOf = (tenant: BenchTenant) => (tenant.token ??= issuer.token({ claims: { [tenantClaim]: tenant.id }, expiresInSeconds: TOKEN_LIFETIME_S }))
  const plainHeaders = new Map<string, Record<string, string>>()
  const authHeaders = new Map<string, Record<string, string>>()
  const plain = (tenant: BenchTenant) => {
    let headers = plainHeaders.get(tenant.id)
    if (!headers) plainHeaders.set(tenant.id, (headers = { 'x-tenant-id': tenant.id }))
    return headers
  }
  const withToken = (tenant: BenchTenant) => {
    let headers = authHeaders.get(tenant.id)
    if (!headers) authHeaders.set(tenant.id, (headers = { 'x-tenant-id': tenant.id, authorization: `Bearer ${tokenOf(tenant)}` }))
    return headers
  }
  const randomUser = (tenant: BenchTenant) => tenant.userIds[Math.floor(Math.random() * tenant.userIds.length)]

  const answeredOk = (_tenant: BenchTenant, body: any) => (body?.status === 'ok' ? null : `answered ${JSON.stringify(body)}`)
  const scoped = (tenant: BenchTenant, body: any) =>
    body?.database?.currentSchema === tenant.id ? null : `ran in schema ${JSON.stringify(body?.database?.currentSchema)}`
  const userChecked = (_tenant: BenchTenant, body: any, spec: RequestSpec) =>
    body?.id === spec.path.slice(spec.path.lastIndexOf('/') + 1) ? null : `answered ${JSON.stringify(body)}`

  const usersFloor = (key: string): CaseDef => ({
    key,
    label: 'floor: same JWT check, schema-qualified query',
    request: (tenant) => ({ path: `/bench/floor/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
    check: userChecked
  })
  const users = (key: string, floor: string, bare?: string): CaseDef => ({
    key,
    label: 'GET /users/:id with JWT, tenant-scoped',
    floor,
    bare,
    request: (tenant) => ({ path: `/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
    check: userChecked
  })

  const cases = {
    aBare: {
      key: 'a-bare',
      label: 'bare Fastify + pg process: SELECT current_schema()',
      bareProcess: true,
      request: (tenant) => ({ path: '/', headers: plain(tenant) }),
      check: answeredOk
    },
    a: {
      key: 'a',
      label: 'floor: SELECT current_schema(), no tenant context',
      request: (tenant) => ({ path: '/bench/floor', headers: plain(tenant) }),
      check: answeredOk
    },
    b: {
      key: 'b',
      label: 'GET / tenant-scoped',
      floor: 'a',
      bare: 'a-bare',
      request: (tenant) => ({ path: '/', headers: plain(tenant) }),
      check: scoped
    },
    cBare: {
      key: 'c-bare',
      label: 'bare Fastify + pg process: @fastify/jwt, schema-qualified query',
      bareProcess: true,
      request: (tenant) => ({ path: `/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
      check: userChecked
    },
    cFloor: usersFloor('c-floor'),
    c: users('c', 'c-floor', 'c-bare'),
    dFloor: usersFloor('d-floor'),
    d: users('d', 'd-floor'),
    bPooled: {
      key: 'b-pooled',
      label: 'GET / tenant-scoped, through PgBouncer (÷ b)',
      floor: 'b',
      pooled: true,
      request: (tenant) => ({ path: '/', headers: plain(tenant) }),
      check: scoped
    },
    cPooled: { ...users('c-pooled', 'c'), label: 'GET /users/:id with JWT, through PgBouncer (÷ c)', pooled: true },
    e: {
      key: 'e',
      label: 'prototype: SET search_path, query, RESET',
      floor: 'a',
      request: (tenant) => ({ path: '/bench/prototype', headers: plain(tenant) }),
      check: scoped
    }
  } satisfies Record<string, CaseDef>
  return { cases, tokenOf }
}
