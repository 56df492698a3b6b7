import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'

/** Where the development issuer listens unless that port is taken; kept so minted tokens stay valid. */
export const DEFAULT_ISSUER_PORT = 9555
const CLIENT_ID = 'tenant-service-local'

export interface DevIssuerIdentity {
  /** The issuer URL tokens carry in `iss`; stored, so it survives restarts. */
  issuer: string
  clientId: string
  kid: string
  privateKey: KeyObject
  publicJwk: Record<string, unknown>
}

interface StoredIdentity {
  issuer: string
  clientId: string
  kid: string
}

function refuseInProduction(what: string) {
  if (process.env.NODE_ENV === 'production') {
    throw new Error(`${what} is a development stand-in and never runs with NODE_ENV=production; configure JWT_ISSUER or COGNITO_* instead`)
  }
}

const writeNew = (file: string, data: string, mode: number) =>
  writeFile(file, data, { mode, flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST') throw error
  })

/**
 * The development issuer's key pair and URL, in `dir` (`.data/issuer`): created on first use, then
 * reused, so tokens minted by `npm run token` and by earlier runs keep verifying.
 */
export async function loadIssuerIdentity(dir: string): Promise<DevIssuerIdentity> {
  refuseInProduction('The development token issuer')
  const keyFile = path.join(dir, 'private-key.pem')
  const identityFile = path.join(dir, 'issuer.json')
  await mkdir(dir, { recursive: true, mode: 0o700 })
  let pem: string
  try {
    pem = await readFile(keyFile, 'utf8')
  } catch {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    // 'wx': when two processes create it at once, the first one's key is the key.
    await writeNew(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600)
    pem = await readFile(keyFile, 'utf8')
  }
  const privateKey = createPrivateKey(pem)
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' })
  // RFC 7638 thumbprint: the kid changes exactly when the key does.
  const kid = createHash('sha256')
    .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
    .digest('base64url')

  let stored: StoredIdentity | null = null
  try {
    stored = JSON.parse(await readFile(identityFile, 'utf8')) as StoredIdentity
  } catch {
    stored = null
  }
  if (!stored || typeof stored.issuer !== 'string' || stored.kid !== kid) {
    stored = { issuer: `http://127.0.0.1:${DEFAULT_ISSUER_PORT}`, clientId: CLIENT_ID, kid }
    await writeFile(identityFile, `${JSON.stringify(stored, null, 2)}\n`, { mode: 0o600 })
  }
  return { issuer: stored.issuer, clientId: stored.clientId, kid, privateKey, publicJwk: { ...jwk, kid, alg: 'RS256', use: 'sig' } }
}

export interface MintOptions {
  tenant?: string
  admin?: boolean
  use?: 'access' | 'id'
  expiresInSeconds?: number
  subject?: string
  username?: string
  /** The claim the service reads the tenant from (TENANT_CLAIM) and the admin group (ADMIN_GROUP). */
  tenantClaim: string
  adminGroup: string
}

const segment = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

/** A token shaped like one of Cognito's, signed with the development key. */
export function mintToken(identity: DevIssuerIdentity, options: MintOptions): string {
  const now = Math.floor(Date.now() / 1000)
  const use = options.use ?? 'access'
  const subject = options.subject ?? randomUUID()
  const username = options.username ?? (options.admin ? 'admin' : `user@${options.tenant ?? 'local'}`)
  const payload: Record<string, unknown> = {
    sub: subject,
    iss: identity.issuer,
    token_use: use,
    ...(use === 'access'
      ? { client_id: identity.clientId, username, scope: 'aws.cognito.signin.user.admin' }
      : { aud: identity.clientId, 'cognito:username': username }),
    ...(options.tenant ? { [options.tenantClaim]: options.tenant } : {}),
    ...(options.admin ? { 'cognito:groups': [options.adminGroup] } : {}),
    auth_time: now,
    iat: now,
    exp: now + (options.expiresInSeconds ?? 3600),
    jti: randomUUID()
  }
  const input = `${segment({ alg: 'RS256', kid: identity.kid, typ: 'JWT' })}.${segment(payload)}`
  return `${input}.${sign('sha256', Buffer.from(input), identity.privateKey).toString('base64url')}`
}

function listen(server: http.Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => reject(error)
    server.once('error', onError)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', onError)
      resolve((server.address() as AddressInfo).port)
    })
  })
}

export interface EmbeddedIssuerHandle {
  issuer: string
  clientId: string
  /** Set when the stored port was taken and the issuer URL changed: tokens minted before no longer verify. */
  movedFrom: string | null
  mint(options: MintOptions): string
  stop(): Promise<void>
}

/**
 * A local OIDC-style issuer on loopback for development: it serves the development key at
 * `/.well-known/jwks.json` (and a discovery document), and the service trusts it exactly as it
 * trusts Cognito, through JWT_ISSUER. Its URL is kept in `.data/issuer/issuer.json`; when that port
 * is taken another is chosen and stored.
 */
export async function startEmbeddedIssuer(options: { dataDir: string }): Promise<EmbeddedIssuerHandle> {
  refuseInProduction('The embedded token issuer')
  let identity = await loadIssuerIdentity(options.dataDir)
  const jwks = JSON.stringify({ keys: [identity.publicJwk] })

  const server = http.createServer((request, response) => {
    const url = (request.url ?? '').split('?')[0]
    if (request.method === 'GET' && url === '/.well-known/jwks.json') {
      response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300' }).end(jwks)
    } else if (request.method === 'GET' && url === '/.well-known/openid-configuration') {
      response.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          issuer: identity.issuer,
          jwks_uri: `${identity.issuer}/.well-known/jwks.json`,
          id_token_signing_alg_values_supported: ['RS256'],
          response_types_supported: ['code'],
          subject_types_supported: ['public']
        })
      )
    } else {
      response.writeHead(404, { 'content-type': 'application/json' }).end('{"message":"not found"}')
    }
  })

  const storedPort = Number(new URL(identity.issuer).port) || DEFAULT_ISSUER_PORT
  let movedFrom: string | null = null
  try {
    await listen(server, storedPort)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error
    const port = await listen(server, 0)
    movedFrom = identity.issuer
    identity = { ...identity, issuer: `http://127.0.0.1:${port}` }
    const stored: StoredIdentity = { issuer: identity.issuer, clientId: identity.clientId, kid: identity.kid }
    await writeFile(path.join(options.dataDir, 'issuer.json'), `${JSON.stringify(stored, null, 2)}\n`, { mode: 0o600 })
  }

  return {
    issuer: identity.issuer,
    clientId: identity.clientId,
    movedFrom,
    mint: (mintOptions) => mintToken(identity, mintOptions),
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
  }
}
