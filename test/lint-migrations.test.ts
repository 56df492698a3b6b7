import { spawn } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import fc from 'fast-check'
import t from 'tap'
import { lintTenantMigrations, readMigrationFiles, tokenize, type Problem } from '../scripts/lint-migrations.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const fixtures = path.join(root, 'test/fixtures/citus-lint')

/** `-- expect: CODE[, CODE]` at the end of a fixture line: the problems that line must produce. */
async function expectations(file: string): Promise<string[]> {
  const lines = (await readFile(file, 'utf8')).split('\n')
  const expected: string[] = []
  lines.forEach((text, index) => {
    const match = /-- expect: ([A-Z_, ]+)$/.exec(text)
    if (match) for (const code of match[1].split(/,\s*/)) expected.push(`${index + 1} ${code}`)
  })
  return expected.sort()
}

const found = (problems: Problem[]) => problems.map((problem) => `${problem.line} ${problem.code}`).sort()

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import=tsx', 'scripts/lint-migrations.ts', ...args], { cwd: root })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

t.test('the tenant migrations of this service keep every schema distributable', async (t) => {
  const files = await readMigrationFiles([path.join(root, 'migrations/tenant')])
  t.ok(files.length > 0, 'there are tenant migrations to check')
  t.same(lintTenantMigrations(files), [])
})

t.test('SQL that Citus can distribute passes, tricky-but-local names included', async (t) => {
  const files = await readMigrationFiles([path.join(fixtures, 'good')])
  t.equal(files.length, 2)
  t.same(
    lintTenantMigrations(files).map((problem) => `${problem.file}:${problem.line} ${problem.code}`),
    []
  )
})

t.test('each bad fixture reports exactly the problems marked on its lines', async (t) => {
  const dir = path.join(fixtures, 'bad')
  const names = (await readdir(dir)).filter((name) => name.endsWith('.sql')).sort()
  t.ok(names.length >= 5)
  for (const name of names) {
    const file = path.join(dir, name)
    const expected = await expectations(file)
    t.ok(expected.length > 0, `${name} marks what it expects`)
    const problems = lintTenantMigrations(await readMigrationFiles([file]))
    t.same(found(problems), expected, name)
  }
})

t.test('every rule is exercised by the bad fixtures', async (t) => {
  const problems = lintTenantMigrations(await readMigrationFiles([path.join(fixtures, 'bad')]))
  const codes = new Set(problems.map((problem) => problem.code))
  for (const code of [
    'FOREIGN_KEY_OUTSIDE_SCHEMA',
    'VIEW_OUTSIDE_SCHEMA',
    'QUALIFIED_NAME',
    'PRIMARY_KEY_TYPE',
    'INT_SEQUENCE',
    'SEARCH_PATH',
    'SCHEMA_DDL',
    'EXTENSION'
  ]) {
    t.ok(codes.has(code as Problem['code']), code)
  }
})

/** The line and rule of each problem in one migration made of `lines`. */
const problemsIn = (lines: string[]) => lintTenantMigrations([{ file: '0001_case.sql', sql: lines.join('\n') }]).map((problem) => [problem.line, problem.code])

t.test('an UPDATE doing STABLE arithmetic on a column, which Citus refuses, is reported; now() is not a column', async (t) => {
  const found = problemsIn([
    "UPDATE files SET expires_at = created_at + interval '1 hour';",
    "UPDATE files SET expires_at = now() + interval '1 hour';",
    "UPDATE files SET expires_at = now() - interval '1 day' WHERE expires_at IS NULL;"
  ])
  t.same(found, [[1, 'STABLE_UPDATE']])
})

t.test('a constraint inside ADD COLUMN, which Citus refuses, is reported; one added on its own is not', async (t) => {
  const found = problemsIn([
    'CREATE TABLE users (id uuid PRIMARY KEY);',
    "ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member'));",
    'ALTER TABLE users ADD COLUMN sub text UNIQUE;',
    "ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'active';",
    "ALTER TABLE users ADD CONSTRAINT users_status_check CHECK (status IN ('active'));"
  ])
  t.same(found, [
    [2, 'ADD_COLUMN_CONSTRAINT'],
    [3, 'ADD_COLUMN_CONSTRAINT']
  ])
})

t.test('a primary key is judged by the type an earlier migration gave the column', async (t) => {
  const problems = lintTenantMigrations([
    { file: '0001_events.sql', sql: 'CREATE TABLE events (id integer NOT NULL, body text);' },
    { file: '0002_events_key.sql', sql: '\n\nALTER TABLE events ADD PRIMARY KEY (id);' }
  ])
  t.same(
    problems.map((problem) => [problem.file, problem.line, problem.code]),
    [['0002_events_key.sql', 3, 'PRIMARY_KEY_TYPE']]
  )
  t.match(problems[0].message, /events\.id is integer: use bigint .* or uuid/)
})

t.test('an allow comment silences only the rule it names', async (t) => {
  const problems = lintTenantMigrations([
    {
      file: 'x.sql',
      sql: [
        '-- citus-lint: allow FOREIGN_KEY_OUTSIDE_SCHEMA',
        'CREATE TABLE a (country text REFERENCES public.countries (code));',
        '-- citus-lint: allow FOREIGN_KEY_OUTSIDE_SCHEMA',
        'CREATE TABLE b (id serial PRIMARY KEY);'
      ].join('\n')
    }
  ])
  t.same(found(problems), ['4 INT_SEQUENCE', '4 PRIMARY_KEY_TYPE'])
})

t.test('strings, quoted identifiers and dollar quotes never leak names', async (t) => {
  const { tokens } = tokenize(`SELECT 'a''b.c', "we""ird"."x", $q$ public.t $q$, E'\\'public.y'`)
  t.same(
    tokens.map((token) => [token.kind, token.value]),
    [
      ['word', 'select'],
      ['string', "a'b.c"],
      ['op', ','],
      ['ident', 'we"ird'],
      ['op', '.'],
      ['ident', 'x'],
      ['op', ','],
      ['dollar', ' public.t '],
      ['op', ','],
      ['string', "'public.y"]
    ]
  )
})

t.test('the lint never throws, whatever the input', async (t) => {
  const piece = fc.constantFrom(
    ...[
      "'",
      '"',
      '$$',
      '$a$',
      '--',
      '/*',
      '*/',
      '(',
      ')',
      ',',
      ';',
      '.',
      '::',
      'E',
      '\n',
      ' ',
      'public',
      'x',
      'CREATE TABLE',
      'PRIMARY KEY',
      'REFERENCES',
      'ALTER TABLE',
      'ADD',
      'COLUMN',
      'VIEW',
      'FROM',
      'serial',
      'int',
      'GENERATED',
      'IDENTITY',
      'SET',
      'search_path'
    ]
  )
  const sqlish = fc.array(piece, { maxLength: 60 }).map((pieces) => pieces.join(''))
  fc.assert(
    fc.property(sqlish, (sql) => {
      lintTenantMigrations([{ file: 'fuzz.sql', sql }])
    }),
    { numRuns: 500 }
  )
  t.pass('500 generated inputs linted')
})

t.test('the command exits 1 and names file, line and rule for each problem', async (t) => {
  const bad = await runCli(['test/fixtures/citus-lint/bad/foreign-keys.sql'])
  t.equal(bad.code, 1)
  t.match(bad.stderr, /test\/fixtures\/citus-lint\/bad\/foreign-keys\.sql:3: FOREIGN_KEY_OUTSIDE_SCHEMA foreign key to public\.tenants/)
  t.match(bad.stderr, /3 Citus compatibility problem\(s\)/)

  const good = await runCli(['test/fixtures/citus-lint/good'])
  t.equal(good.code, 0, good.stderr)
  t.match(good.stdout, /2 tenant migration\(s\) checked/)

  const real = await runCli([])
  t.equal(real.code, 0, real.stderr)
})
