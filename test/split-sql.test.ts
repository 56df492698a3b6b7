import t from 'tap'
import { loadMigrations } from '../lib/tenants/index.ts'
import { splitStatements } from '../lib/tenants/split-sql.ts'

/** Migration files are sent one statement per message (DESIGN §9): the splitter must not cut inside anything. */

t.test('statements split at top-level semicolons; what lies between them is dropped', async (t) => {
  t.same(splitStatements('CREATE TABLE a (id bigint);\n\n-- a comment\nCREATE INDEX a_id ON a (id);\n'), [
    'CREATE TABLE a (id bigint)',
    'CREATE INDEX a_id ON a (id)'
  ])
  t.same(splitStatements('SELECT 1'), ['SELECT 1'], 'the last statement needs no semicolon')
  t.same(splitStatements(';;  ;\n-- only a comment\n/* and another */'), [], 'nothing but separators and comments')
  t.same(splitStatements('SELECT 1 -- trailing; not a split\n, 2;'), ['SELECT 1 -- trailing; not a split\n, 2'], 'a comment inside keeps its text')
})

t.test('semicolons inside strings, identifiers, comments and dollar quotes do not split', async (t) => {
  const cases: [string, string[]][] = [
    ["INSERT INTO t VALUES ('a;b'); SELECT 2", ["INSERT INTO t VALUES ('a;b')", 'SELECT 2']],
    ["SELECT 'it''s; fine'; SELECT 2", ["SELECT 'it''s; fine'", 'SELECT 2']],
    ["SELECT E'a\\';b'; SELECT 2", ["SELECT E'a\\';b'", 'SELECT 2']],
    ['SELECT 1 AS "x;y"; SELECT 2', ['SELECT 1 AS "x;y"', 'SELECT 2']],
    ['SELECT 1 /* a; /* nested; */ still; */; SELECT 2', ['SELECT 1 /* a; /* nested; */ still; */', 'SELECT 2']],
    [
      'CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$; SELECT 2',
      ['CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$', 'SELECT 2']
    ],
    ['DO $body$ BEGIN PERFORM $$;$$; END $body$; SELECT 2', ['DO $body$ BEGIN PERFORM $$;$$; END $body$', 'SELECT 2']],
    ['SELECT $1::text; SELECT a$b FROM t', ['SELECT $1::text', 'SELECT a$b FROM t']]
  ]
  for (const [sql, expected] of cases) t.same(splitStatements(sql), expected, sql)
})

t.test('a SQL-standard routine body (BEGIN ATOMIC … END) stays whole', async (t) => {
  const routine = `CREATE OR REPLACE FUNCTION add_one(n int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN n IS NULL THEN 0 ELSE n END;
  SELECT n + 1;
END`
  t.same(splitStatements(`${routine};\nCREATE TABLE t (id bigint);`), [routine, 'CREATE TABLE t (id bigint)'])
  t.same(splitStatements('BEGIN; SELECT 1; END;'), ['BEGIN', 'SELECT 1', 'END'], 'a transaction block is not a routine body')
})

t.test("the shipped migrations split into statements that rebuild each file's code", async (t) => {
  for (const set of ['public', 'tenant'] as const) {
    for (const migration of await loadMigrations(set)) {
      const statements = splitStatements(migration.sql)
      t.ok(statements.length > 0, `${set}/${migration.name}: ${statements.length} statements`)
      const code = (sql: string) =>
        sql
          .replace(/--[^\n]*/g, '')
          .replace(/[\s;]+/g, ' ')
          .trim()
      t.equal(code(statements.join(';\n')), code(migration.sql), `${set}/${migration.name}: nothing lost or added`)
    }
  }
})
