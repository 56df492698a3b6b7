import { createScratchDatabase, type ScratchDatabase } from '../../lib/embedded/postgres.ts'

/**
 * The cluster the tests run against: TEST_DATABASE_URL names its maintenance database (scripts/test.ts
 * sets it to the machine's PostgreSQL or to an embedded one it started).
 */
export const clusterUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export type TestDatabase = ScratchDatabase

/** A fresh, empty database for one test file; `drop()` removes it and every tenant role it made. */
export const createTestDatabase = (): Promise<TestDatabase> => createScratchDatabase(clusterUrl, 'test')
