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

t.test('a quote or a semicolon inside a line comment, a dollar-quoted body or an e-string does not split or open a string', async (t) => {
  const cases: [string, string[], string][] = [
    // A line comment: its quote opens no string, its semicolon ends nothing.
    ["-- it's the first one\nSELECT 1; SELECT 2", ['SELECT 1', 'SELECT 2'], 'a quote in a comment before a statement'],
    ["SELECT 1; -- it's; not a statement\nSELECT 'a;b'", ['SELECT 1', "SELECT 'a;b'"], 'a quote and a semicolon in a comment between statements'],
    ["SELECT 1 -- it's; inside\n, 2; SELECT 3", ["SELECT 1 -- it's; inside\n, 2", 'SELECT 3'], 'a quote and a semicolon in a comment inside a statement'],
    // A dollar-quoted body: quotes and comment markers in it are text.
    ["COMMENT ON TABLE t IS $$it's; here$$; SELECT 2", ["COMMENT ON TABLE t IS $$it's; here$$", 'SELECT 2'], 'an unbalanced quote in $$…$$'],
    [
      `DO $fn$ BEGIN RAISE NOTICE 'don''t; stop'; PERFORM 1; -- it's\nEND $fn$; SELECT 'x;y'`,
      [`DO $fn$ BEGIN RAISE NOTICE 'don''t; stop'; PERFORM 1; -- it's\nEND $fn$`, "SELECT 'x;y'"],
      'quotes, semicolons and a commented quote in a tagged body'
    ],
    ['SELECT $$a " b; -- c$$; SELECT 2', ['SELECT $$a " b; -- c$$', 'SELECT 2'], 'a double quote and a comment marker in $$…$$'],
    // Lower-case e'…': backslash escapes, as E'…'.
    ["SELECT e'it\\'s; fine'; SELECT 2", ["SELECT e'it\\'s; fine'", 'SELECT 2'], "e'…\\'…' with a semicolon after the escaped quote"],
    ["SELECT e'\\\\'; SELECT ';'", ["SELECT e'\\\\'", "SELECT ';'"], 'an escaped backslash before the closing quote'],
    ["SELECT e'a''b;c'; SELECT 2", ["SELECT e'a''b;c'", 'SELECT 2'], "a doubled quote in e'…'"],
    // A word ending in e is a type name, not an E prefix: its string takes no backslash escapes.
    ["SELECT some_type'a\\'; SELECT 2", ["SELECT some_type'a\\'", 'SELECT 2'], "type'…' is no e-string"]
  ]
  for (const [sql, expected, label] of cases) t.same(splitStatements(sql), expected, label)
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
