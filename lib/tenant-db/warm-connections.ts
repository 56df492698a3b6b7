import type pg from 'pg'

/**
 * One statement that switches to one of the tenant roles for its own implicit transaction only,
 * as a request's context does (DESIGN §6), and leaves nothing behind. The switch checks that the
 * login is a member of the role, and a connection's first check builds the list of the login's
 * memberships, which PostgreSQL 15 does in time that grows with the square of the tenants
 * (BENCHMARKS.md, R2). Done here, that first
 * switch is not a request's. With no tenant role yet it switches nothing.
 */
const FIRST_SWITCH = `SELECT set_config('role', r.rolname, true)
  FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
 WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = session_user) AND starts_with(r.rolname, $1)
 LIMIT 1`

/**
 * Opens `count` pooled connections and makes each one's first switch to a tenant role, then gives
 * them back to the pool, which keeps them however long they stay idle. Answers how many were
 * warmed; rejects with the first failure, after releasing every connection it took.
 */
export async function warmConnections(pool: pg.Pool, count: number, tenantRolePrefix: string): Promise<number> {
  // Taken together: one after another, the pool would hand out the same connection each time.
  const taken = await Promise.allSettled(Array.from({ length: count }, () => pool.connect()))
  const clients = taken.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []))
  const switched = await Promise.allSettled(clients.map((client) => client.query(FIRST_SWITCH, [tenantRolePrefix])))
  for (const client of clients) client.release()
  const failure = [...taken, ...switched].find((outcome) => outcome.status === 'rejected')
  if (failure) throw failure.reason
  return clients.length
}
