/**
 * Splits a SQL script (a migration file) into its statements, so that each can be sent as a
 * message of its own: Citus forwards a DDL statement's original text to its workers, which refuse
 * several commands in one message (DESIGN §9).
 *
 * It knows what can hide a semicolon, as psql does: comments (`--`, nested `/* *\/`), string
 * literals ('…', E'…' with backslash escapes), quoted identifiers, dollar-quoted bodies, and the
 * `BEGIN ATOMIC … END` body of a SQL-standard function or procedure. Statements keep their text
 * as written, comments inside them included; what lies between them (blank lines, comments) is
 * dropped.
 */
export function splitStatements(sql: string): string[] {
  const statements: string[] = []
  let start = 0
  /** Words of the current statement so far, lower-cased, up to a few: enough to know its kind. */
  let head: string[] = []
  /** Depth of BEGIN … END (and CASE … END) inside a function body of the SQL standard. */
  let atomicDepth = 0
  let hasCode = false
  let i = 0

  const finish = (end: number) => {
    if (hasCode) statements.push(sql.slice(start, end).trim())
    start = end + 1
    head = []
    atomicDepth = 0
    hasCode = false
  }
  const routineBody = () =>
    head[0] === 'create' && (head[1] === 'function' || head[1] === 'procedure' || (head[1] === 'or' && (head[3] === 'function' || head[3] === 'procedure')))

  while (i < sql.length) {
    const c = sql[i]
    const next = sql[i + 1]
    if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i)
      i = end === -1 ? sql.length : end + 1
      if (!hasCode) start = i
    } else if (c === '/' && next === '*') {
      let depth = 0
      do {
        if (sql.startsWith('/*', i)) {
          depth++
          i += 2
        } else if (sql.startsWith('*/', i)) {
          depth--
          i += 2
        } else i++
      } while (depth > 0 && i < sql.length)
      if (!hasCode) start = i
    } else if (/\s/.test(c)) {
      i++
      if (!hasCode) start = i
    } else if (c === ';') {
      if (atomicDepth > 0) i++
      else {
        finish(i)
        i++
      }
    } else {
      hasCode = true
      if (c === "'" || ((c === 'E' || c === 'e') && next === "'" && !/[\w$]/.test(sql[i - 1] ?? ''))) {
        const backslashEscapes = c !== "'"
        i += backslashEscapes ? 2 : 1
        while (i < sql.length) {
          if (backslashEscapes && sql[i] === '\\') i += 2
          else if (sql[i] === "'" && sql[i + 1] === "'") i += 2
          else if (sql[i] === "'") {
            i++
            break
          } else i++
        }
      } else if (c === '"') {
        i++
        while (i < sql.length) {
          if (sql[i] === '"' && sql[i + 1] === '"') i += 2
          else if (sql[i] === '"') {
            i++
            break
          } else i++
        }
      } else if (c === '$' && !/[\w$]/.test(sql[i - 1] ?? '')) {
        const tag = /^\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 66))
        if (tag) {
          const end = sql.indexOf(tag[0], i + tag[0].length)
          i = end === -1 ? sql.length : end + tag[0].length
        } else i++
      } else if (/[A-Za-z_]/.test(c)) {
        const word = /^[A-Za-z_][A-Za-z0-9_$]*/.exec(sql.slice(i, i + 64))![0].toLowerCase()
        i += word.length
        if (head.length < 4) head.push(word)
        if (routineBody()) {
          if (word === 'atomic' && atomicDepth === 0 && /begin\s+$/i.test(sql.slice(Math.max(0, i - 32), i - word.length))) atomicDepth = 1
          else if (atomicDepth > 0 && (word === 'begin' || word === 'case')) atomicDepth++
          else if (atomicDepth > 0 && word === 'end') atomicDepth--
        }
      } else i++
    }
  }
  finish(sql.length)
  return statements
}

const migrationStatements = new WeakMap<{ sql: string }, string[]>()

/** The statements of a migration, split once. */
export function statementsOf(migration: { sql: string }): string[] {
  let statements = migrationStatements.get(migration)
  if (!statements) migrationStatements.set(migration, (statements = splitStatements(migration.sql)))
  return statements
}
