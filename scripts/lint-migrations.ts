/**
 * `npm run lint:migrations`: checks that tenant migrations keep every tenant schema distributable
 * with Citus schema-based sharding (DESIGN §9). A tenant schema is placed whole on one worker, so
 * its SQL must not reach outside the schema, and its keys must be bigint or uuid.
 *
 *   tsx scripts/lint-migrations.ts [file-or-directory ...]     (default: migrations/tenant)
 *
 * Prints one line per problem (`file:line: CODE message`) and exits 1 if there is any. A line, or
 * the line after it, may carry `-- citus-lint: allow CODE` for a deliberate exception, such as a
 * foreign key to a table the operator made a Citus reference table.
 */
import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export type RuleCode =
  | 'FOREIGN_KEY_OUTSIDE_SCHEMA'
  | 'VIEW_OUTSIDE_SCHEMA'
  | 'QUALIFIED_NAME'
  | 'PRIMARY_KEY_TYPE'
  | 'INT_SEQUENCE'
  | 'SEARCH_PATH'
  | 'SCHEMA_DDL'
  | 'EXTENSION'
  | 'STABLE_UPDATE'
  | 'ADD_COLUMN_CONSTRAINT'

export interface Problem {
  file: string
  line: number
  code: RuleCode
  message: string
}

export interface MigrationFile {
  file: string
  sql: string
}

type TokenKind = 'word' | 'ident' | 'string' | 'dollar' | 'number' | 'op'

interface Token {
  kind: TokenKind
  /** Lower-cased for words, unescaped contents for identifiers and strings, the body for dollar quotes. */
  value: string
  line: number
  /** For dollar-quoted strings: the line the body starts on. */
  bodyLine?: number
}

interface Tokenized {
  tokens: Token[]
  /** Line number to the rule codes a `citus-lint: allow` comment on that line names. */
  allows: Map<number, Set<string>>
}

const ALLOW_COMMENT = /citus-lint:\s*allow\s+([A-Z_,\s]+)/

function recordAllow(allows: Map<number, Set<string>>, comment: string, line: number) {
  const match = ALLOW_COMMENT.exec(comment)
  if (!match) return
  const codes = allows.get(line) ?? new Set<string>()
  for (const code of match[1].split(/[\s,]+/)) if (code) codes.add(code)
  allows.set(line, codes)
}

/** A PostgreSQL lexer, just precise enough to find names: comments, strings and dollar quotes never hide or fake one. */
export function tokenize(sql: string, firstLine = 1): Tokenized {
  const tokens: Token[] = []
  const allows = new Map<number, Set<string>>()
  let line = firstLine
  let i = 0
  const advance = (to: number) => {
    for (let k = i; k < to; k++) if (sql.charCodeAt(k) === 10) line++
    i = to
  }
  while (i < sql.length) {
    const c = sql[i]
    const next = sql[i + 1]
    if (/\s/.test(c)) {
      advance(i + 1)
    } else if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i)
      const stop = end === -1 ? sql.length : end
      recordAllow(allows, sql.slice(i, stop), line)
      advance(stop)
    } else if (c === '/' && next === '*') {
      // Block comments nest in PostgreSQL.
      let depth = 0
      let k = i
      while (k < sql.length) {
        if (sql.startsWith('/*', k)) {
          depth++
          k += 2
        } else if (sql.startsWith('*/', k)) {
          depth--
          k += 2
          if (depth === 0) break
        } else k++
      }
      recordAllow(allows, sql.slice(i, k), line)
      advance(k)
    } else if (c === "'" || ((c === 'E' || c === 'e') && next === "'")) {
      const escapes = c !== "'"
      const start = line
      let k = escapes ? i + 2 : i + 1
      let value = ''
      while (k < sql.length) {
        if (escapes && sql[k] === '\\') {
          value += sql[k + 1] ?? ''
          k += 2
        } else if (sql[k] === "'" && sql[k + 1] === "'") {
          value += "'"
          k += 2
        } else if (sql[k] === "'") {
          k++
          break
        } else value += sql[k++]
      }
      advance(k)
      tokens.push({ kind: 'string', value, line: start })
    } else if (c === '"') {
      const start = line
      let k = i + 1
      let value = ''
      while (k < sql.length) {
        if (sql[k] === '"' && sql[k + 1] === '"') {
          value += '"'
          k += 2
        } else if (sql[k] === '"') {
          k++
          break
        } else value += sql[k++]
      }
      advance(k)
      tokens.push({ kind: 'ident', value, line: start })
    } else if (c === '$' && /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.test(sql.slice(i, i + 66))) {
      const tag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 66))![0]
      const bodyStart = i + tag.length
      const end = sql.indexOf(tag, bodyStart)
      const stop = end === -1 ? sql.length : end
      const start = line
      const value = sql.slice(bodyStart, stop)
      advance(end === -1 ? sql.length : end + tag.length)
      tokens.push({ kind: 'dollar', value, line: start, bodyLine: start })
    } else if (/[A-Za-z_\u0080-\uffff]/.test(c)) {
      const match = /^[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/.exec(sql.slice(i))!
      tokens.push({ kind: 'word', value: match[0].toLowerCase(), line })
      advance(i + match[0].length)
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(next ?? ''))) {
      const match = /^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?/.exec(sql.slice(i))!
      tokens.push({ kind: 'number', value: match[0], line })
      advance(i + match[0].length)
    } else if (c === ':' && next === ':') {
      tokens.push({ kind: 'op', value: '::', line })
      advance(i + 2)
    } else if ('.(),;[]'.includes(c)) {
      tokens.push({ kind: 'op', value: c, line })
      advance(i + 1)
    } else if (c === '$') {
      // A positional parameter ($1).
      const match = /^\$[0-9]*/.exec(sql.slice(i))!
      tokens.push({ kind: 'op', value: match[0], line })
      advance(i + match[0].length)
    } else {
      const match = /^[+\-*/<>=~!@#%^&|`?:]+/.exec(sql.slice(i))
      const text = match ? match[0] : c
      tokens.push({ kind: 'op', value: text, line })
      advance(i + text.length)
    }
  }
  return { tokens, allows }
}

function splitStatements(tokens: Token[]): Token[][] {
  const statements: Token[][] = []
  let current: Token[] = []
  for (const token of tokens) {
    if (token.kind === 'op' && token.value === ';') {
      if (current.length > 0) statements.push(current)
      current = []
    } else current.push(token)
  }
  if (current.length > 0) statements.push(current)
  return statements
}

const isName = (token: Token | undefined): token is Token => token?.kind === 'word' || token?.kind === 'ident'
const isOp = (token: Token | undefined, value: string) => token?.kind === 'op' && token.value === value
const isWord = (token: Token | undefined, ...values: string[]) => token?.kind === 'word' && values.includes(token.value)

/** The only schema a tenant migration may name: built-in types and functions. */
const ALLOWED_SCHEMA = 'pg_catalog'

/** Keywords after which a dotted name is a relation, type or routine, so its first part is a schema. */
const OBJECT_KEYWORDS = new Set([
  'table',
  'view',
  'index',
  'sequence',
  'function',
  'procedure',
  'routine',
  'aggregate',
  'type',
  'domain',
  'trigger',
  'references',
  'into',
  'update',
  'join',
  'only',
  'exists',
  'truncate',
  'using',
  'as',
  'of',
  'collation',
  'operator',
  'statistics',
  'policy',
  'rule',
  'setof',
  'returns'
])

/** Words after which a dotted name is a column reference even inside a table definition. */
const EXPRESSION_WORDS = new Set([
  'select',
  'distinct',
  'all',
  'and',
  'or',
  'not',
  'case',
  'when',
  'then',
  'else',
  'in',
  'is',
  'like',
  'ilike',
  'between',
  'by',
  'on',
  'where',
  'having',
  'returning',
  'values',
  'exists',
  'any',
  'some',
  'array',
  'row',
  'interval'
])

/** Functions whose arguments use FROM as a keyword (`extract(epoch FROM t.at)`), where it names no relation. */
const FROM_ARGUMENT_FUNCTIONS = new Set(['extract', 'substring', 'trim', 'overlay', 'position', 'normalize'])

/** Statements whose `ON` is followed by the relation they act on. */
function onNamesRelation(head: string[]): boolean {
  const text = head.join(' ')
  return /^(create( or replace)?( unique)?( constraint)? (index|trigger|policy|rule)|alter (trigger|policy|rule)|drop (trigger|policy|rule)|grant|revoke|comment|security label)\b/.test(
    text
  )
}

/** Functions whose first argument is a relation name in a string. */
const REGCLASS_FUNCTIONS = new Set(['nextval', 'currval', 'setval', 'to_regclass', 'to_regtype', 'to_regproc', 'pg_get_serial_sequence'])
const REG_TYPES = new Set(['regclass', 'regtype', 'regproc', 'regprocedure', 'regoper', 'regoperator', 'regnamespace', 'regconfig', 'regrole'])

/** Splits `schema.name` as PostgreSQL would read it inside a string such as `'public.users'::regclass`. */
function parseQualifiedString(value: string): string[] {
  const parts: string[] = []
  let k = 0
  while (k < value.length) {
    if (value[k] === '"') {
      let part = ''
      k++
      while (k < value.length) {
        if (value[k] === '"' && value[k + 1] === '"') {
          part += '"'
          k += 2
        } else if (value[k] === '"') {
          k++
          break
        } else part += value[k++]
      }
      parts.push(part)
    } else {
      const end = value.indexOf('.', k)
      parts.push(
        value
          .slice(k, end === -1 ? value.length : end)
          .trim()
          .toLowerCase()
      )
      k = end === -1 ? value.length : end
    }
    if (value[k] === '.') k++
    else break
  }
  return parts
}

const display = (parts: string[]) => parts.join('.')

const BIGINT_TYPES = new Set(['bigint', 'int8', 'bigserial', 'serial8'])
const KEY_TYPES = new Set([...BIGINT_TYPES, 'uuid'])
const INT_SERIALS = new Set(['serial', 'serial4', 'smallserial', 'serial2'])

/** Words that end a column's type and begin its constraints. */
const COLUMN_CONSTRAINT_WORDS = new Set([
  'constraint',
  'not',
  'null',
  'default',
  'primary',
  'unique',
  'check',
  'references',
  'generated',
  'collate',
  'compression',
  'storage'
])
const TABLE_CONSTRAINT_WORDS = new Set(['constraint', 'primary', 'unique', 'check', 'foreign', 'exclude', 'like'])

interface Column {
  type: string
  line: number
}

interface Table {
  columns: Map<string, Column>
  key: Set<string>
}

/** What earlier statements declared, so an `ALTER TABLE … ADD PRIMARY KEY` can be checked against column types. */
interface SchemaState {
  tables: Map<string, Table>
}

/** Splits the tokens between a pair of parentheses at top-level commas. */
function splitTopLevel(tokens: Token[]): Token[][] {
  const parts: Token[][] = []
  let depth = 0
  let current: Token[] = []
  for (const token of tokens) {
    if (isOp(token, '(') || isOp(token, '[')) depth++
    if (isOp(token, ')') || isOp(token, ']')) depth--
    if (depth === 0 && isOp(token, ',')) {
      parts.push(current)
      current = []
    } else current.push(token)
  }
  if (current.length > 0) parts.push(current)
  return parts
}

/** The tokens inside the parenthesis that opens at `open`, and the index of its closing parenthesis. */
function parenthesised(tokens: Token[], open: number): { inner: Token[]; close: number } {
  let depth = 0
  for (let k = open; k < tokens.length; k++) {
    if (isOp(tokens[k], '(')) depth++
    if (isOp(tokens[k], ')')) {
      depth--
      if (depth === 0) return { inner: tokens.slice(open + 1, k), close: k }
    }
  }
  return { inner: tokens.slice(open + 1), close: tokens.length }
}

/** A column's type as written, lower-cased and without modifiers: `character varying`, `bigint`, `integer[]`. */
function columnType(tokens: Token[]): { type: string; rest: Token[] } {
  const words: string[] = []
  let k = 0
  let array = false
  for (; k < tokens.length; k++) {
    const token = tokens[k]
    if (token.kind === 'word' && COLUMN_CONSTRAINT_WORDS.has(token.value)) break
    if (isOp(token, '(')) {
      k = parenthesised(tokens, k).close
      continue
    }
    if (isOp(token, '[') || isWord(token, 'array')) array = true
    if (token.kind === 'word' || token.kind === 'ident') words.push(token.value)
    if (isOp(token, '.')) words.push('.')
  }
  const type = words.join(' ').replace(/ \. /g, '.')
  return { type: array ? `${type}[]` : type, rest: tokens.slice(k) }
}

function normaliseType(type: string): string {
  const bare = type.replace(/^pg_catalog\./, '')
  const aliases: Record<string, string> = { int: 'integer', int4: 'integer', int2: 'smallint' }
  return aliases[bare] ?? bare
}

interface StatementContext {
  file: string
  report: (line: number, code: RuleCode, message: string) => void
  state: SchemaState
}

function checkKeyColumn(context: StatementContext, table: string, column: string, type: string, line: number) {
  const normalised = normaliseType(type)
  if (KEY_TYPES.has(normalised)) return
  context.report(
    line,
    'PRIMARY_KEY_TYPE',
    `primary key ${table}.${column} is ${normalised || 'of unknown type'}: use bigint (GENERATED ALWAYS AS IDENTITY) or uuid`
  )
}

/** Checks one column definition: int sequences anywhere, and an inline PRIMARY KEY's type. */
function columnDefinition(context: StatementContext, table: string, tokens: Token[], state: Table) {
  const nameToken = tokens[0]
  if (!isName(nameToken)) return
  const { type, rest } = columnType(tokens.slice(1))
  const normalised = normaliseType(type)
  state.columns.set(nameToken.value, { type: normalised, line: nameToken.line })
  if (INT_SERIALS.has(normalised)) {
    context.report(
      nameToken.line,
      'INT_SEQUENCE',
      `${table}.${nameToken.value} is ${normalised}, a 4-byte sequence: use bigint GENERATED ALWAYS AS IDENTITY (or bigserial)`
    )
  }
  for (let k = 0; k < rest.length; k++) {
    if (isWord(rest[k], 'generated') && rest.slice(k, k + 6).some((token) => isWord(token, 'identity')) && !BIGINT_TYPES.has(normalised)) {
      context.report(rest[k].line, 'INT_SEQUENCE', `identity column ${table}.${nameToken.value} is ${normalised}: Citus needs identity columns to be bigint`)
    }
    if (isWord(rest[k], 'primary') && isWord(rest[k + 1], 'key')) {
      state.key.add(nameToken.value)
      checkKeyColumn(context, table, nameToken.value, normalised, nameToken.line)
    }
  }
}

/** `PRIMARY KEY (a, b)` as a table constraint: each column must have a key type. */
function tableKeyConstraint(context: StatementContext, table: string, tokens: Token[], state: Table) {
  const at = tokens.findIndex((token, k) => isWord(token, 'primary') && isWord(tokens[k + 1], 'key'))
  if (at === -1 || !isOp(tokens[at + 2], '(')) return
  const { inner } = parenthesised(tokens, at + 2)
  for (const part of splitTopLevel(inner)) {
    const name = part[0]
    if (!isName(name)) continue
    state.key.add(name.value)
    const column = state.columns.get(name.value)
    // A column declared nowhere this lint has read cannot be judged.
    if (column) checkKeyColumn(context, table, name.value, column.type, tokens[at].line)
  }
}

/** The table a CREATE TABLE or ALTER TABLE statement names, and where its name ends. */
function tableName(tokens: Token[], from: number): { name: string; end: number } | undefined {
  let k = from
  while (isWord(tokens[k], 'if', 'not', 'exists', 'only')) k++
  if (!isName(tokens[k])) return undefined
  let name = tokens[k].value
  while (isOp(tokens[k + 1], '.') && isName(tokens[k + 2])) {
    name = tokens[k + 2].value
    k += 2
  }
  return { name, end: k + 1 }
}

function createTable(context: StatementContext, tokens: Token[], tableAt: number) {
  const named = tableName(tokens, tableAt + 1)
  if (!named) return
  const open = tokens.findIndex((token, k) => k >= named.end && isOp(token, '('))
  // CREATE TABLE … AS SELECT and CREATE TABLE … PARTITION OF have no column list of their own to check.
  if (open !== named.end) return
  const table: Table = { columns: new Map(), key: new Set() }
  context.state.tables.set(named.name, table)
  const elements = splitTopLevel(parenthesised(tokens, open).inner)
  for (const element of elements) {
    if (element.length === 0) continue
    if (element[0].kind === 'word' && TABLE_CONSTRAINT_WORDS.has(element[0].value)) continue
    columnDefinition(context, named.name, element, table)
  }
  for (const element of elements) {
    if (element[0]?.kind === 'word' && TABLE_CONSTRAINT_WORDS.has(element[0].value)) tableKeyConstraint(context, named.name, element, table)
  }
}

function alterTable(context: StatementContext, tokens: Token[], tableAt: number) {
  const named = tableName(tokens, tableAt + 1)
  if (!named) return
  let table = context.state.tables.get(named.name)
  if (!table) {
    table = { columns: new Map(), key: new Set() }
    context.state.tables.set(named.name, table)
  }
  for (const action of splitTopLevel(tokens.slice(named.end))) {
    if (isWord(action[0], 'add')) {
      let k = 1
      if (isWord(action[k], 'column')) k++
      while (isWord(action[k], 'if', 'not', 'exists')) k++
      if (action[k]?.kind === 'word' && TABLE_CONSTRAINT_WORDS.has(action[k].value)) {
        tableKeyConstraint(context, named.name, action.slice(k), table)
      } else {
        // Citus: "cannot execute ADD COLUMN command with PRIMARY KEY, UNIQUE, FOREIGN and CHECK
        // constraints": every constraint of a distributed table needs a name of its own.
        const inline = action.slice(k + 1).find((token) => isWord(token, 'check', 'unique', 'references', 'primary', 'constraint'))
        if (inline) {
          context.report(
            inline.line,
            'ADD_COLUMN_CONSTRAINT',
            `ADD COLUMN with ${inline.value.toUpperCase()}: Citus refuses a constraint inside ADD COLUMN; add the column, then ADD CONSTRAINT <name>`
          )
        }
        columnDefinition(context, named.name, action.slice(k), table)
      }
    } else if (isWord(action[0], 'alter')) {
      let k = 1
      if (isWord(action[k], 'column')) k++
      const name = action[k]
      if (!isName(name)) continue
      const typeAt = action.findIndex((token) => isWord(token, 'type'))
      if (typeAt > k) {
        const usingAt = action.findIndex((token) => isWord(token, 'using'))
        const { type } = columnType(action.slice(typeAt + 1, usingAt === -1 ? undefined : usingAt))
        table.columns.set(name.value, { type: normaliseType(type), line: name.line })
        if (table.key.has(name.value)) checkKeyColumn(context, named.name, name.value, type, name.line)
      }
      const identity = action.some((token) => isWord(token, 'identity'))
      const column = table.columns.get(name.value)
      if (identity && isWord(action[k + 1], 'add') && column && !BIGINT_TYPES.has(column.type)) {
        context.report(name.line, 'INT_SEQUENCE', `identity column ${named.name}.${name.value} is ${column.type}: Citus needs identity columns to be bigint`)
      }
    }
  }
}

function lintStatement(context: StatementContext, tokens: Token[]) {
  const words = tokens.filter((token) => token.kind === 'word').map((token) => token.value)
  const head = words.slice(0, 6)
  const isView = /^create( or replace)?( temp| temporary)?( recursive)?( materialized)? view\b/.test(head.join(' '))
  const onIsRelation = onNamesRelation(head)
  const inTableDdl = /^(create( global| local)?( temp| temporary| unlogged)? table|alter table)\b/.test(head.join(' '))

  // Citus routes an UPDATE of a tenant table to its worker only when the STABLE functions it calls
  // take no column: `created_at + interval '1 hour'` (timestamptz + interval is STABLE) is refused
  // ("STABLE functions used in UPDATE queries cannot be called with column references"), and
  // provisioning with it.
  if (isWord(tokens[0], 'update')) {
    for (let k = 1; k + 1 < tokens.length; k++) {
      const column = tokens[k - 1]
      const operand = column?.kind === 'word' && !isWord(column, 'now', 'set') ? column : null
      if (operand && (isOp(tokens[k], '+') || isOp(tokens[k], '-')) && isWord(tokens[k + 1], 'interval')) {
        context.report(
          tokens[k].line,
          'STABLE_UPDATE',
          `UPDATE with ${operand.value} ${tokens[k].value} interval: timestamptz arithmetic is STABLE, and Citus refuses it on a column in an UPDATE; use now() or an IMMUTABLE expression`
        )
      }
    }
  }

  // Whole-statement rules.
  for (let k = 0; k < tokens.length; k++) {
    const token = tokens[k]
    if (isWord(token, 'set') && isWord(tokens[k + 1], 'schema')) {
      context.report(token.line, 'SCHEMA_DDL', 'SET SCHEMA moves an object out of the tenant schema')
    }
    if (isWord(token, 'create', 'alter', 'drop') && isWord(tokens[k + 1], 'schema')) {
      context.report(token.line, 'SCHEMA_DDL', `${token.value.toUpperCase()} SCHEMA: a tenant migration works inside the schema it is given`)
    }
    if (isWord(token, 'create', 'alter', 'drop') && isWord(tokens[k + 1], 'extension')) {
      context.report(token.line, 'EXTENSION', 'extensions are database-wide: create them in a control-plane migration (migrations/public)')
    }
    // `SET search_path FROM CURRENT` on a routine pins the tenant schema it was created in: allowed.
    const setsPath =
      (isWord(token, 'set') && isWord(tokens[k + 1], 'search_path') && !(isWord(tokens[k + 2], 'from') && isWord(tokens[k + 3], 'current'))) ||
      (isWord(token, 'set') && isWord(tokens[k + 1], 'local', 'session') && isWord(tokens[k + 2], 'search_path')) ||
      (isWord(token, 'set_config') && isOp(tokens[k + 1], '(') && tokens[k + 2]?.kind === 'string' && tokens[k + 2].value.toLowerCase() === 'search_path')
    if (setsPath) context.report(token.line, 'SEARCH_PATH', 'the migration runner sets search_path to the tenant schema; a migration must not change it')
  }

  const tableAt = tokens.findIndex((token) => isWord(token, 'table'))
  if (inTableDdl && tableAt !== -1) {
    if (isWord(tokens[0], 'create')) createTable(context, tokens, tableAt)
    else alterTable(context, tokens, tableAt)
  }

  // Names: a dotted name in a relation, type or routine position, or any three-part name, names a schema.
  const frames: boolean[] = []
  for (let k = 0; k < tokens.length; k++) {
    const token = tokens[k]
    const prev = tokens[k - 1]
    if (isOp(token, '(')) frames.push(prev?.kind === 'word' && FROM_ARGUMENT_FUNCTIONS.has(prev.value))
    if (isOp(token, ')')) frames.pop()

    if (token.kind === 'string') {
      const castTo = isOp(tokens[k + 1], '::') ? tokens[k + 2] : undefined
      const relationArgument = isOp(prev, '(') && tokens[k - 2]?.kind === 'word' && REGCLASS_FUNCTIONS.has(tokens[k - 2].value)
      if ((castTo?.kind === 'word' && REG_TYPES.has(castTo.value)) || relationArgument) {
        const parts = parseQualifiedString(token.value)
        if (parts.length > 1 && parts[0] !== ALLOWED_SCHEMA) {
          context.report(token.line, 'QUALIFIED_NAME', `'${token.value}' names schema ${parts[0]}: tenant migrations name objects unqualified`)
        }
      }
      continue
    }

    if (!isName(token) || isOp(prev, '.') || !isOp(tokens[k + 1], '.') || !isName(tokens[k + 2])) continue
    const parts = [token.value]
    let end = k
    while (isOp(tokens[end + 1], '.') && isName(tokens[end + 2])) {
      parts.push(tokens[end + 2].value)
      end += 2
    }
    if (parts[0] === ALLOWED_SCHEMA) continue

    const prevPrev = tokens[k - 2]
    let objectPosition =
      (prev?.kind === 'word' && OBJECT_KEYWORDS.has(prev.value)) ||
      (isWord(prev, 'on') && onIsRelation) ||
      (isWord(prev, 'from') && !frames.at(-1) && !isWord(prevPrev, 'distinct')) ||
      isOp(prev, '::') ||
      isOp(tokens[end + 1], '(')
    // Inside a table definition, `name schema.type` declares a column of another schema's type.
    if (!objectPosition && inTableDdl && prev?.kind === 'word' && (isOp(prevPrev, '(') || isOp(prevPrev, ',') || isWord(prevPrev, 'add', 'column'))) {
      objectPosition = !COLUMN_CONSTRAINT_WORDS.has(prev.value) && !EXPRESSION_WORDS.has(prev.value)
    }
    const schemaLike = parts[0] === 'public' || parts[0] === 'information_schema' || parts[0].startsWith('pg_')
    if (!(objectPosition || parts.length > 2 || schemaLike)) continue

    const name = display(parts)
    if (isWord(prev, 'references')) {
      context.report(token.line, 'FOREIGN_KEY_OUTSIDE_SCHEMA', `foreign key to ${name}: tenant tables may reference only tables in their own schema`)
    } else if (isView) {
      context.report(token.line, 'VIEW_OUTSIDE_SCHEMA', `view reads ${name}: a view must stay inside the tenant schema`)
    } else {
      context.report(token.line, 'QUALIFIED_NAME', `${name} names schema ${parts[0]}: tenant migrations name objects unqualified (pg_catalog excepted)`)
    }
  }

  // Routine bodies are SQL too.
  for (const token of tokens) {
    if (token.kind === 'dollar') lintSql(context, token.value, token.bodyLine ?? token.line)
  }
}

function lintSql(context: StatementContext, sql: string, firstLine: number) {
  const { tokens, allows } = tokenize(sql, firstLine)
  const report = context.report
  const scoped: StatementContext = {
    ...context,
    report: (line, code, message) => {
      const allowed = allows.get(line)?.has(code) || allows.get(line - 1)?.has(code)
      if (!allowed) report(line, code, message)
    }
  }
  for (const statement of splitStatements(tokens)) lintStatement(scoped, statement)
}

/**
 * Lints tenant migrations in version order. They are read as one sequence, so a primary key added by
 * a later migration is checked against the column types an earlier one declared.
 */
export function lintTenantMigrations(files: MigrationFile[]): Problem[] {
  const problems: Problem[] = []
  const state: SchemaState = { tables: new Map() }
  for (const { file, sql } of files) {
    const seen = new Set<string>()
    const context: StatementContext = {
      file,
      state,
      report: (line, code, message) => {
        const key = `${line}:${code}:${message}`
        if (seen.has(key)) return
        seen.add(key)
        problems.push({ file, line, code, message })
      }
    }
    lintSql(context, sql, 1)
  }
  return problems.sort((a, b) => (a.file === b.file ? a.line - b.line : a.file < b.file ? -1 : 1))
}

/** The `.sql` files a list of files and directories names, sorted by name (version order) within each directory. */
export async function readMigrationFiles(paths: string[]): Promise<MigrationFile[]> {
  const files: MigrationFile[] = []
  for (const target of paths) {
    if ((await stat(target)).isDirectory()) {
      const names = (await readdir(target)).filter((name) => name.endsWith('.sql')).sort()
      for (const name of names) files.push({ file: path.join(target, name), sql: await readFile(path.join(target, name), 'utf8') })
    } else {
      files.push({ file: target, sql: await readFile(target, 'utf8') })
    }
  }
  return files
}

export const formatProblem = (problem: Problem) => `${problem.file}:${problem.line}: ${problem.code} ${problem.message}`

async function main() {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
  const args = process.argv.slice(2)
  const targets = args.length > 0 ? args : [path.relative(process.cwd(), path.join(root, 'migrations/tenant')) || '.']
  const files = await readMigrationFiles(targets)
  const problems = lintTenantMigrations(files)
  for (const problem of problems) console.error(formatProblem(problem))
  if (problems.length > 0) {
    console.error(`${problems.length} Citus compatibility problem(s) in tenant migrations`)
    process.exit(1)
  }
  console.log(`${files.length} tenant migration(s) checked: distributable with Citus schema-based sharding`)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await main()
}
