import { randomBytes } from 'node:crypto'
import pg from 'pg'

/**
 * The cluster the tests run against: TEST_DATABASE_URL names its maintenance database (scripts/test.ts
 * sets it to the machine's PostgreSQL or to an embedded one it started).
 */
export const clusterUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export interface TestDatabase {
  url: string
  name: string
  /** Tenant roles are cluster-wide; a prefix per database keeps test files from colliding. */
  rolePrefix: string
  drop(): Promise<void>
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}

/** A fresh, empty database for one test file; `drop()` removes it and every tenant role it made. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const suffix = randomBytes(5).toString('hex')
  const name = `test_${suffix}`
  const rolePrefix = `t${suffix}_`
  const admin = new pg.Client({ connectionString: clusterUrl })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`)
  } finally {
    await admin.end()
  }
  return {
    name,
    rolePrefix,
    url: withDatabase(clusterUrl, name),
    async drop() {
      const client = new pg.Client({ connectionString: clusterUrl })
      await client.connect()
      try {
        await client.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`)
        const { rows } = await client.query<{ rolname: string }>(
          `SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)`,
          [rolePrefix]
        )
        for (const { rolname } of rows) await client.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(rolname)}`)
      } finally {
        await client.end()
      }
    }
  }
}
