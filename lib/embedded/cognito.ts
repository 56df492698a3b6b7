import { type ChildProcess, spawn } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import net from 'node:net'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import {
  AdminAddUserToGroupCommand,
  AdminCreateUserCommand,
  AdminGetUserCommand,
  AdminSetUserPasswordCommand,
  CognitoIdentityProviderClient,
  CreateGroupCommand,
  CreateUserPoolClientCommand,
  CreateUserPoolCommand,
  ListGroupsCommand,
  ListUserPoolClientsCommand,
  InitiateAuthCommand,
  ListUserPoolsCommand
} from '@aws-sdk/client-cognito-identity-provider'

export interface EmbeddedCognitoOptions {
  /** cognito-local keeps its pools and users under `<dataDir>/.cognito`, kept across restarts. */
  dataDir: string
  /** Tried first, so the issuer (which names the port) stays the same from one start to the next; 0 lets the kernel choose. */
  port?: number
  poolName?: string
  clientName?: string
  /** The group whose members the service treats as platform operators (ADMIN_GROUP). */
  adminGroup?: string
}

export interface EmbeddedCognito {
  endpoint: string
  port: number
  region: string
  userPoolId: string
  clientId: string
  /** What tokens carry in `iss`: `<endpoint>/<pool id>`, with the JWKS under it. */
  issuer: string
  /** Credentials for the SDK: cognito-local checks no signature, but the SDK signs every call. */
  credentials: { accessKeyId: string; secretAccessKey: string }
  /** A client of the SDK pointed at this server. */
  client: CognitoIdentityProviderClient
  /** Set when `port` was taken and another one was used: tokens minted for the old issuer no longer verify. */
  movedFrom: number | null
  stop(): Promise<void>
}

/** The region the SDK is told; cognito-local ignores it (its pool ids start with `local_`). */
export const EMBEDDED_REGION = 'us-east-1'
const CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' }
const HOST = '127.0.0.1'

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.once('error', () => resolve(false))
    server.listen(port, HOST, () => server.close(() => resolve(true)))
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, HOST, () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}

/** Resolves once the server answers a call of the user-pool API. */
async function waitUntilAnswering(endpoint: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`cognito-local exited with status ${child.exitCode}: ${output()}`)
    try {
      const response = await fetch(endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'AWSCognitoIdentityProviderService.ListUserPools' },
        body: JSON.stringify({ MaxResults: 1 })
      })
      if (response.ok) return
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`cognito-local did not answer at ${endpoint} within 30 s: ${output()}`)
}

/** A pool user's attributes, or null when the pool holds no such user. */
export async function embeddedUser(client: CognitoIdentityProviderClient, userPoolId: string, username: string): Promise<Record<string, string> | null> {
  try {
    const user = await client.send(new AdminGetUserCommand({ UserPoolId: userPoolId, Username: username }))
    return Object.fromEntries((user.UserAttributes ?? []).map((attribute) => [attribute.Name!, attribute.Value ?? '']))
  } catch (error) {
    if ((error as { name?: string }).name === 'UserNotFoundException') return null
    throw error
  }
}

/**
 * Logs a user of the embedded pool in through InitiateAuth (USER_PASSWORD_AUTH), as a front end
 * would. With `group`, the user is a platform operator: made on first use and put in that group.
 * Without `password`, a fresh random one is set first (development only: an invited member has
 * only a temporary password, whose login would ask for a new one).
 */
export async function embeddedLogin(
  client: CognitoIdentityProviderClient,
  state: Pick<EmbeddedCognitoState, 'userPoolId' | 'clientId'>,
  user: { email: string; password?: string; group?: string }
): Promise<{ idToken: string; accessToken: string }> {
  const UserPoolId = state.userPoolId
  if (user.group) {
    if (!(await embeddedUser(client, UserPoolId, user.email))) {
      await client.send(new AdminCreateUserCommand({ UserPoolId, Username: user.email, MessageAction: 'SUPPRESS' }))
    }
    await client.send(new AdminAddUserToGroupCommand({ UserPoolId, Username: user.email, GroupName: user.group }))
  }
  let password = user.password
  if (password === undefined) {
    password = `Dev-${randomBytes(12).toString('base64url')}1`
    await client.send(new AdminSetUserPasswordCommand({ UserPoolId, Username: user.email, Password: password, Permanent: true }))
  }
  const result = await client.send(
    new InitiateAuthCommand({ ClientId: state.clientId, AuthFlow: 'USER_PASSWORD_AUTH', AuthParameters: { USERNAME: user.email, PASSWORD: password } })
  )
  const tokens = result.AuthenticationResult
  if (!tokens?.IdToken || !tokens.AccessToken) {
    throw new Error(`the login of ${user.email} asks for ${result.ChallengeName ?? 'a challenge'}; log in without a password to set a new one`)
  }
  return { idToken: tokens.IdToken, accessToken: tokens.AccessToken }
}

/** The platform operator `npm start` logs in for the development log, and `npm run token -- --admin` by default. */
export const EMBEDDED_ADMIN_EMAIL = 'admin@example.com'

/**
 * The pool the service expects, made once and found again on later starts (by name): email as
 * the username, the `tenant_id` custom attribute, an app client that may log in with a password
 * (USER_PASSWORD_AUTH and ADMIN_USER_PASSWORD_AUTH) and issues tokens valid one hour, and the
 * platform operators' group.
 */
export async function ensureUserPool(
  client: CognitoIdentityProviderClient,
  names: { poolName: string; clientName: string; adminGroup: string }
): Promise<{ userPoolId: string; clientId: string }> {
  const pools = await client.send(new ListUserPoolsCommand({ MaxResults: 60 }))
  let userPoolId = pools.UserPools?.find((pool) => pool.Name === names.poolName)?.Id
  if (!userPoolId) {
    const created = await client.send(
      new CreateUserPoolCommand({
        PoolName: names.poolName,
        UsernameAttributes: ['email'],
        Schema: [{ Name: 'tenant_id', AttributeDataType: 'String', Mutable: true, StringAttributeConstraints: { MinLength: '1', MaxLength: '63' } }]
      })
    )
    userPoolId = created.UserPool!.Id!
  }
  const clients = await client.send(new ListUserPoolClientsCommand({ UserPoolId: userPoolId, MaxResults: 60 }))
  let clientId = clients.UserPoolClients?.find((appClient) => appClient.ClientName === names.clientName)?.ClientId
  if (!clientId) {
    const created = await client.send(
      new CreateUserPoolClientCommand({
        UserPoolId: userPoolId,
        ClientName: names.clientName,
        ExplicitAuthFlows: ['ALLOW_USER_PASSWORD_AUTH', 'ALLOW_ADMIN_USER_PASSWORD_AUTH', 'ALLOW_REFRESH_TOKEN_AUTH'],
        AccessTokenValidity: 1,
        IdTokenValidity: 1,
        TokenValidityUnits: { AccessToken: 'hours', IdToken: 'hours' }
      })
    )
    clientId = created.UserPoolClient!.ClientId!
  }
  const groups = await client.send(new ListGroupsCommand({ UserPoolId: userPoolId }))
  if (!groups.Groups?.some((group) => group.GroupName === names.adminGroup)) {
    await client.send(new CreateGroupCommand({ UserPoolId: userPoolId, GroupName: names.adminGroup, Description: 'Platform operators' }))
  }
  return { userPoolId, clientId }
}

/** Where a started server leaves its coordinates, for `npm run token`. */
const STATE_FILE = 'service.json'

export interface EmbeddedCognitoState {
  endpoint: string
  region: string
  userPoolId: string
  clientId: string
  issuer: string
}

/** The coordinates of the embedded pool last started with `dataDir`, or null when none was. */
export async function loadEmbeddedCognito(dataDir: string): Promise<EmbeddedCognitoState | null> {
  try {
    return JSON.parse(await readFile(path.join(dataDir, STATE_FILE), 'utf8')) as EmbeddedCognitoState
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return null
    throw error
  }
}

/** A client of the SDK for the embedded pool (cognito-local checks no signature; the SDK signs anyway). */
export const embeddedCognitoClient = (state: Pick<EmbeddedCognitoState, 'endpoint' | 'region'>) =>
  new CognitoIdentityProviderClient({ region: state.region, endpoint: state.endpoint, credentials: CREDENTIALS })

/**
 * Starts cognito-local (a Cognito user-pool API on this machine, from npm) as a child process
 * with its data in `dataDir`, and makes sure its pool, app client and admin group exist. Its
 * tokens are RS256, issued by `http://127.0.0.1:<port>/<pool id>` with the JWKS under it, as
 * Cognito's are, so the service verifies them the way it verifies Cognito's.
 */
export async function startEmbeddedCognito(options: EmbeddedCognitoOptions): Promise<EmbeddedCognito> {
  if (process.env.NODE_ENV === 'production') {
    throw new Error('The embedded user pool (cognito-local) is a development stand-in and never runs with NODE_ENV=production; configure COGNITO_* instead')
  }
  await mkdir(options.dataDir, { recursive: true })
  const wanted = options.port ?? 0
  const port = wanted !== 0 && (await portIsFree(wanted)) ? wanted : await freePort()
  const endpoint = `http://${HOST}:${port}`
  const bin = createRequire(import.meta.url).resolve('cognito-local/lib/bin/start.js')
  const child = spawn(process.execPath, ['--no-deprecation', bin], {
    cwd: options.dataDir,
    env: { ...process.env, PORT: String(port), HOST, NODE_OPTIONS: '' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000)
  }
  child.stdout!.on('data', keep)
  child.stderr!.on('data', keep)
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await exited
    }
  }
  const client = embeddedCognitoClient({ region: EMBEDDED_REGION, endpoint })
  try {
    await waitUntilAnswering(endpoint, child, () => output)
    const { userPoolId, clientId } = await ensureUserPool(client, {
      poolName: options.poolName ?? 'tenant-service',
      clientName: options.clientName ?? 'tenant-service',
      adminGroup: options.adminGroup ?? 'admin'
    })
    const state: EmbeddedCognitoState = { endpoint, region: EMBEDDED_REGION, userPoolId, clientId, issuer: `${endpoint}/${userPoolId}` }
    await writeFile(path.join(options.dataDir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`)
    return {
      ...state,
      port,
      credentials: CREDENTIALS,
      client,
      movedFrom: wanted !== 0 && wanted !== port ? wanted : null,
      stop: async () => {
        client.destroy()
        await stop()
      }
    }
  } catch (error) {
    client.destroy()
    await stop()
    throw error
  }
}
