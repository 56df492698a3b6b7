/**
 * `npm run -s token -- --tenant acme-corp [--admin] [--use access|id] [--expires 1h]`: mints a
 * Cognito-shaped token with the development issuer's key in .data/issuer, for `npm start` with no
 * issuer configured. The token alone goes to stdout, so `TOKEN=$(npm run -s token -- ...)` works.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { loadIssuerIdentity, mintToken } from '../lib/embedded/issuer.ts'
import { TENANT_ID_PATTERN } from '../schemas/common.ts'
import { ConfigError, durationMs, loadConfig, type Config } from '../schemas/env.ts'

const USAGE = 'usage: npm run -s token -- [--tenant <tenant id>] [--admin] [--use access|id] [--expires 1h] [--sub <subject>] [--dir .data/issuer]'
function fail(message: string): never {
  console.error(message)
  process.exit(1)
}

/** `90` (seconds), `90s`, `15m`, `1h`, `7d` into seconds. */
function parseExpiry(value: string): number {
  let seconds: number
  try {
    seconds = Math.floor(durationMs(value, 's') / 1000)
  } catch {
    fail(`--expires: expected a duration such as 30m, 1h or 7d (got ${JSON.stringify(value)})`)
  }
  if (seconds <= 0) fail('--expires: must be at least one second')
  return seconds
}

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        tenant: { type: 'string' },
        admin: { type: 'boolean', default: false },
        use: { type: 'string', default: 'access' },
        expires: { type: 'string', default: '1h' },
        sub: { type: 'string' },
        dir: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false }
      }
    })
  } catch (error) {
    return fail(`${(error as Error).message}\n${USAGE}`)
  }
})()

if (values.help) {
  console.log(USAGE)
  process.exit(0)
}
if (!values.tenant && !values.admin) fail(`name a tenant (--tenant) or ask for an admin token (--admin)\n${USAGE}`)
if (values.tenant && !new RegExp(TENANT_ID_PATTERN).test(values.tenant)) fail(`--tenant: not a valid tenant id (got ${JSON.stringify(values.tenant)})`)
if (values.use !== 'access' && values.use !== 'id') fail(`--use: access or id (got ${JSON.stringify(values.use)})`)

let config: Config
try {
  config = loadConfig()
} catch (error) {
  if (error instanceof ConfigError) fail(error.problems.map((problem) => `config error: ${problem}`).join('\n'))
  throw error
}
if (config.NODE_ENV === 'production') fail('npm run token mints development tokens and never runs with NODE_ENV=production')
if (config.JWT_ISSUER) {
  fail(
    `JWT_ISSUER is set (${config.JWT_ISSUER}): the service trusts that issuer, so get tokens from it; this script mints for the embedded development issuer only`
  )
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..').replace(/[\\/]dist$/, '')
const dataDir = values.dir ? path.resolve(values.dir) : path.join(projectRoot, '.data', 'issuer')
const identity = await loadIssuerIdentity(dataDir)
const token = mintToken(identity, {
  tenant: values.tenant,
  admin: values.admin,
  use: values.use,
  expiresInSeconds: parseExpiry(values.expires),
  subject: values.sub,
  tenantClaim: config.TENANT_CLAIM,
  adminGroup: config.ADMIN_GROUP
})
console.log(token)
if (process.stderr.isTTY)
  console.error(`# ${values.use} token of ${identity.issuer}${values.tenant ? ` for tenant ${values.tenant}` : ''}${values.admin ? ', admin' : ''}`)
