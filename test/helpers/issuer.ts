import { generateKeyPairSync, randomBytes, randomUUID, sign, createHmac, type JsonWebKey, type KeyObject } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'

/** An RSA key pair as an issuer holds it, with its public half as a JWK. */
export interface SigningKey {
  kid: string
  privateKey: KeyObject
  publicKey: KeyObject
  jwk: JsonWebKey & { kid: string; alg: string; use: string }
  /** The public key as PEM, what an attacker would try as an HMAC secret. */
  pem: string
}

export function createSigningKey(kid: string = `key-${randomBytes(6).toString('hex')}`, modulusLength = 2048): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength })
  return {
    kid,
    privateKey,
    publicKey,
    jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' },
    pem: publicKey.export({ type: 'spki', format: 'pem' }) as string
  }
}

const segment = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** How a token is signed: a real RSA key, an HMAC secret (a forgery), or not at all. */
export type Signer = { rsa: KeyObject } | { hmac: string | Buffer } | 'unsigned'

/**
 * Signs whatever it is given: the attacker-side factory. The header is taken as is (any `alg`,
 * any `kid`), and so is the payload (a string payload is encoded verbatim).
 */
export function signToken(header: Record<string, unknown>, payload: Record<string, unknown> | string, signer: Signer): string {
  const input = `${segment(header)}.${segment(payload)}`
  if (signer === 'unsigned') return `${input}.`
  const signature = 'rsa' in signer ? sign('sha256', Buffer.from(input), signer.rsa) : createHmac('sha256', signer.hmac).update(input).digest()
  return `${input}.${signature.toString('base64url')}`
}

export interface TokenOptions {
  use?: 'access' | 'id'
  /** Sets `custom:tenant_id`; set another tenant claim through `claims`. */
  tenant?: string
  /** Sets `cognito:groups`. */
  groups?: string[]
  /** Merged last; `undefined` removes a claim. */
  claims?: Record<string, unknown>
  /** Merged over `{alg: 'RS256', kid, typ: 'JWT'}`; `undefined` removes a field. */
  header?: Record<string, unknown>
  /** Defaults to the issuer's current key. */
  key?: SigningKey
  expiresInSeconds?: number
}

export type IssuerMode = 'up' | 'unavailable' | 'not-found'

export interface TestIssuer {
  /** The issuer as tokens carry it in `iss`, with a path like a Cognito user pool's. */
  url: string
  jwksUrl: string
  clientId: string
  port: number
  /** The key new tokens are signed with. */
  readonly key: SigningKey
  /** The keys the JWKS publishes. */
  readonly published: readonly SigningKey[]
  /** JWKS requests answered so far, whatever the answer. */
  readonly jwksFetches: number
  /**
   * `up` serves the key set; `unavailable` answers 503; `not-found` answers 404 as Cognito does for
   * a user pool that does not exist.
   */
  setMode(mode: IssuerMode): void
  /** A new current key; the old one stays published unless `keepOld` is false. */
  rotate(options?: { keepOld?: boolean }): SigningKey
  /** A Cognito-shaped token of this issuer (an access token unless `use: 'id'`). */
  token(options?: TokenOptions): string
  /** The payload `token()` would sign, for tests that sign it some other way. */
  claims(options?: TokenOptions): Record<string, unknown>
  /** Stops listening, so the issuer is unreachable (connection refused) until `start()`. */
  stop(): Promise<void>
  /** Listens again, on the same port. */
  start(): Promise<void>
  close(): Promise<void>
}

function withoutUndefined(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined))
}

/** A real HTTP issuer on 127.0.0.1 with real RSA keys, publishing them at `<issuer>/.well-known/jwks.json`. */
export async function startTestIssuer(options: { clientId?: string; poolPath?: string } = {}): Promise<TestIssuer> {
  const clientId = options.clientId ?? `client-${randomBytes(6).toString('hex')}`
  const poolPath = options.poolPath ?? `/test-pool-${randomBytes(4).toString('hex')}`
  let key = createSigningKey()
  let published: SigningKey[] = [key]
  let mode: IssuerMode = 'up'
  let jwksFetches = 0
  let url = ''

  const server = http.createServer((request, response) => {
    const path = (request.url ?? '').split('?')[0]
    if (path === `${poolPath}/.well-known/jwks.json`) {
      jwksFetches++
      if (mode === 'unavailable') {
        response.writeHead(503, { 'content-type': 'text/plain' }).end('Service Unavailable')
      } else if (mode === 'not-found') {
        response
          .writeHead(404, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-errortype': 'ResourceNotFoundException:' })
          .end(JSON.stringify({ message: `User pool ${poolPath.slice(1)} does not exist.` }))
      } else {
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: published.map((k) => k.jwk) }))
      }
      return
    }
    if (path === `${poolPath}/.well-known/openid-configuration` && mode === 'up') {
      response
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ issuer: url, jwks_uri: `${url}/.well-known/jwks.json`, id_token_signing_alg_values_supported: ['RS256'] }))
      return
    }
    response.writeHead(404).end()
  })

  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject)
        resolve((server.address() as AddressInfo).port)
      })
    })
  const port = await listen(0)
  url = `http://127.0.0.1:${port}${poolPath}`

  function claims(opts: TokenOptions = {}): Record<string, unknown> {
    const now = Math.floor(Date.now() / 1000)
    const use = opts.use ?? 'access'
    const sub = randomUUID()
    const base: Record<string, unknown> = {
      sub,
      iss: url,
      token_use: use,
      auth_time: now,
      iat: now,
      exp: now + (opts.expiresInSeconds ?? 3600),
      jti: randomUUID(),
      ...(use === 'access'
        ? { client_id: clientId, username: `user-${sub.slice(0, 8)}`, scope: 'aws.cognito.signin.user.admin' }
        : { aud: clientId, 'cognito:username': `user-${sub.slice(0, 8)}`, email: `${sub.slice(0, 8)}@example.test` }),
      ...(opts.tenant === undefined ? {} : { 'custom:tenant_id': opts.tenant }),
      ...(opts.groups === undefined ? {} : { 'cognito:groups': opts.groups })
    }
    return withoutUndefined({ ...base, ...opts.claims })
  }

  async function stop() {
    if (!server.listening) return
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeAllConnections()
    await closed
  }

  return {
    url,
    jwksUrl: `${url}/.well-known/jwks.json`,
    clientId,
    port,
    get key() {
      return key
    },
    get published() {
      return published
    },
    get jwksFetches() {
      return jwksFetches
    },
    setMode(next) {
      mode = next
    },
    rotate({ keepOld = true } = {}) {
      key = createSigningKey()
      published = keepOld ? [...published, key] : [key]
      return key
    },
    claims,
    token(opts = {}) {
      const signingKey = opts.key ?? key
      const header = withoutUndefined({ alg: 'RS256', kid: signingKey.kid, typ: 'JWT', ...opts.header })
      return signToken(header, claims(opts), { rsa: signingKey.privateKey })
    },
    stop,
    async start() {
      if (!server.listening) await listen(port)
    },
    close: stop
  }
}
