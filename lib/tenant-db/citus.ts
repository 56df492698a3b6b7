import type pg from 'pg'

/**
 * Citus schema-based sharding (DESIGN §9). Citus opens a coordinator's connections to a worker as
 * the current role and caches them per role, so with tenant roles every pooled connection would end
 * up holding a worker connection per tenant it served: workers run out of connections at a few
 * hundred tenants. With tenant roles on Citus, the service therefore has each of its connections
 * close its worker connections at the end of every transaction instead of caching them
 * (`citus.max_cached_conns_per_worker = 0`): a worker then sees at most PG_POOL_MAX connections per
 * replica, however many tenants there are, for the cost of a worker connection per transaction
 * (BENCHMARKS.md, R6). TENANT_ISOLATION=search_path keeps the cache and drops the tenant roles.
 */

/**
 * Run by every new connection of the pool when tenant roles are on: sets the session's worker
 * connection cache to none when the database is a Citus coordinator, and does nothing otherwise.
 * One statement, sent without waiting: pg runs it before anything the connection is used for.
 */
export const UNCACHED_WORKER_CONNECTIONS = `DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
    PERFORM pg_catalog.set_config('citus.max_cached_conns_per_worker', '0', false);
  END IF;
END $$`

export interface DatabaseKind {
  /** The Citus version on the coordinator, or null on plain PostgreSQL. */
  citus: string | null
  /** Worker nodes, on Citus. */
  workers: number
  postgres: string
}

/** What the database is: plain PostgreSQL or a Citus coordinator, and with how many workers. */
export async function databaseKind(db: Pick<pg.ClientBase, 'query'>): Promise<DatabaseKind> {
  const { rows } = await db.query<{ citus: string | null; postgres: string }>(
    `SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus') AS citus, current_setting('server_version') AS postgres`
  )
  let workers = 0
  if (rows[0].citus) {
    const { rows: nodes } = await db.query<{ workers: number }>(
      `SELECT count(*)::int AS workers FROM pg_dist_node WHERE noderole = 'primary' AND isactive AND shouldhaveshards`
    )
    workers = nodes[0].workers
  }
  return { citus: rows[0].citus, workers, postgres: rows[0].postgres }
}
