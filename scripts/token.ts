/**
 * `npm run -s token -- --admin` or `npm run -s token -- --tenant acme --email boss@acme.test`: logs
 * in to the embedded user pool that `npm start` runs with nothing configured (cognito-local, data
 * in .data/cognito) through InitiateAuth, as a front end would, and prints the token alone on
 * stdout, so `TOKEN=$(npm run -s token -- ...)` works.
 *
 * - `--admin`: a platform operator, a pool user in ADMIN_GROUP (`admin@example.com` unless
 *   `--email` says otherwise), made on first use.
 * - `--tenant <id> --email <email>`: a member the service invited (POST /users with invite, or
 *   POST /auth/tenants with admin); its pool user must be bound to that tenant.
 *
 * Without `--password`, the user's password is first set to a fresh random one (development
 * only: an invited member has only a temporary password, which would ask for a new one).
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { EMBEDDED_ADMIN_EMAIL, embeddedCognitoClient, embeddedLogin, embeddedUser, loadEmbeddedCognito } from '../lib/embedded/cognito.ts'
import { TENANT_ID_PATTERN } from '../schemas/common.ts'
import { ConfigError, loadConfig, type Config } from '../schemas/env.ts'

const USAGE =
  'usage: npm run -s token -- --admin [--email <email>] | --tenant <tenant id> --email <member email>  [--password <password>] [--use id|access] [--dir .data/cognito]'
function fail(message: string): never {
  console.error(message)
  process.exit(1)
}

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        tenant: { type: 'string' },
        admin: { type: 'boolean', default: false },
        email: { type: 'string' },
        password: { type: 'string' },
        use: { type: 'string', default: 'id' },
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
if (values.tenant && values.admin) fail(`either --admin or --tenant, not both\n${USAGE}`)
if (!values.tenant && !values.admin) fail(`name a member (--tenant and --email) or ask for a platform admin (--admin)\n${USAGE}`)
if (values.tenant && !new RegExp(TENANT_ID_PATTERN).test(values.tenant)) fail(`--tenant: not a valid tenant id (got ${JSON.stringify(values.tenant)})`)
if (values.tenant && !values.email) fail(`--tenant needs --email: the member to log in as\n${USAGE}`)
if (values.use !== 'access' && values.use !== 'id') fail(`--use: id or access (got ${JSON.stringify(values.use)})`)

let config: Config
try {
  config = loadConfig()
} catch (error) {
  if (error instanceof ConfigError) fail(error.problems.map((problem) => `config error: ${problem}`).join('\n'))
  throw error
}
if (config.NODE_ENV === 'production') fail('npm run token logs in to the embedded development user pool and never runs with NODE_ENV=production')
if (config.JWT_ISSUER) {
  fail(`JWT_ISSUER is set (${config.JWT_ISSUER}): the service trusts that issuer, so log in there; this script is for the embedded user pool only`)
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..').replace(/[\\/]dist$/, '')
const dataDir = values.dir ? path.resolve(values.dir) : path.join(projectRoot, '.data', 'cognito')
const state = await loadEmbeddedCognito(dataDir)
if (!state) fail(`no embedded user pool in ${dataDir}: start the service first (npm start)`)
const client = embeddedCognitoClient(state)
const email = values.email ?? EMBEDDED_ADMIN_EMAIL

try {
  if (!values.admin) {
    const user = await embeddedUser(client, state.userPoolId, email)
    if (!user) fail(`the user pool holds no ${email}: invite it first (POST /users with "invite": true)`)
    const tenant = user[config.TENANT_CLAIM]
    if (tenant !== values.tenant) fail(`${email} is bound to ${tenant ? `tenant ${tenant}` : 'no tenant'}, not ${values.tenant}`)
  }
  const tokens = await embeddedLogin(client, state, { email, password: values.password, group: values.admin ? config.ADMIN_GROUP : undefined })
  console.log(values.use === 'id' ? tokens.idToken : tokens.accessToken)
  if (process.stderr.isTTY) {
    console.error(`# ${values.use} token of ${state.issuer} for ${email}${values.admin ? ` (${config.ADMIN_GROUP} group)` : `, tenant ${values.tenant}`}`)
  }
} catch (error) {
  const failure = error as { name?: string; message?: string; code?: string }
  if (failure.code === 'ECONNREFUSED') fail(`the embedded user pool at ${state.endpoint} does not answer: start the service first (npm start)`)
  fail(`logging in failed: ${failure.name ?? 'Error'}: ${failure.message ?? String(error)}`)
} finally {
  client.destroy()
}
