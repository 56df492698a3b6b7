/**
 * AWS Signature Version 4 verification, written from the specification ("Create a signed AWS API
 * request" and "Authenticating requests: using query parameters" for S3) with node:crypto only, so
 * the service's presigned URLs are checked by code that shares nothing with the SDK that made them.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto'

export interface SigV4Credentials {
  accessKeyId: string
  secretAccessKey: string
}

export interface SignedRequest {
  method: string
  /** Absolute URL, or path and query as they arrived on the wire. */
  url: string
  /** Header names in any case; values as sent. `host` is taken from the URL when absent. */
  headers: Record<string, string | string[] | undefined>
}

export interface Verified {
  ok: true
  accessKeyId: string
  /** X-Amz-Date, `yyyymmddThhmmssZ`. */
  amzDate: string
  /** The credential scope, `<yyyymmdd>/<region>/<service>/aws4_request`. */
  scope: string
  region: string
  service: string
  signedHeaders: string[]
  /** Query authentication only: X-Amz-Expires and the moment the URL stops working. */
  expiresSeconds?: number
  expiresAt?: Date
}

export interface Rejected {
  ok: false
  /** The S3 error code a real bucket answers with. */
  code: 'AccessDenied' | 'SignatureDoesNotMatch' | 'AuthorizationQueryParametersError' | 'InvalidAccessKeyId'
  reason: string
}

export type Verification = Verified | Rejected

const ALGORITHM = 'AWS4-HMAC-SHA256'
const MAX_EXPIRES_SECONDS = 604_800

/** RFC 3986: every byte except the unreserved characters A-Z a-z 0-9 - . _ ~ is percent-encoded. */
export function uriEncode(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
}

const sha256Hex = (data: string) => createHash('sha256').update(data, 'utf8').digest('hex')
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data, 'utf8').digest()

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

function splitUrl(url: string): { path: string; rawQuery: string; host: string | undefined } {
  const absolute = /^https?:\/\//i.test(url)
  const rest = absolute ? url.replace(/^https?:\/\/[^/?#]*/i, '') : url
  const host = absolute ? /^https?:\/\/([^/?#]*)/i.exec(url)![1] : undefined
  const hash = rest.indexOf('#')
  const withoutHash = hash === -1 ? rest : rest.slice(0, hash)
  const question = withoutHash.indexOf('?')
  return {
    path: (question === -1 ? withoutHash : withoutHash.slice(0, question)) || '/',
    rawQuery: question === -1 ? '' : withoutHash.slice(question + 1),
    host
  }
}

/** Query parameters decoded, in order, duplicates kept. */
export function parseQuery(rawQuery: string): [string, string][] {
  if (rawQuery === '') return []
  return rawQuery.split('&').map((pair) => {
    const eq = pair.indexOf('=')
    return eq === -1 ? [safeDecode(pair), ''] : [safeDecode(pair.slice(0, eq)), safeDecode(pair.slice(eq + 1))]
  })
}

/** S3 encodes the path once: each segment decoded from the wire and URI-encoded again, `/` kept. */
export function canonicalUri(path: string): string {
  return path
    .split('/')
    .map((segment) => uriEncode(safeDecode(segment)))
    .join('/')
}

export function canonicalQuery(params: [string, string][]): string {
  return params
    .map(([name, value]) => [uriEncode(name), uriEncode(value)] as const)
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join('&')
}

function headerValue(headers: SignedRequest['headers'], name: string): string | undefined {
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== name || value === undefined) continue
    const joined = Array.isArray(value) ? value.join(',') : value
    return joined.trim().replace(/\s+/g, ' ')
  }
  return undefined
}

export interface CanonicalParts {
  method: string
  path: string
  query: [string, string][]
  headers: SignedRequest['headers']
  signedHeaders: string[]
  payloadHash: string
}

export function canonicalRequest(parts: CanonicalParts): string {
  const canonicalHeaders = parts.signedHeaders.map((name) => `${name}:${headerValue(parts.headers, name) ?? ''}\n`).join('')
  return [
    parts.method.toUpperCase(),
    canonicalUri(parts.path),
    canonicalQuery(parts.query),
    canonicalHeaders,
    parts.signedHeaders.join(';'),
    parts.payloadHash
  ].join('\n')
}

export function signingKey(secretAccessKey: string, date: string, region: string, service: string): Buffer {
  return hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, date), region), service), 'aws4_request')
}

/** The hex signature of a canonical request under a scope. */
export function computeSignature(secretAccessKey: string, amzDate: string, scope: string, canonical: string): string {
  const [date, region, service] = scope.split('/')
  const stringToSign = [ALGORITHM, amzDate, scope, sha256Hex(canonical)].join('\n')
  return createHmac('sha256', signingKey(secretAccessKey, date, region, service))
    .update(stringToSign, 'utf8')
    .digest('hex')
}

function parseAmzDate(amzDate: string): Date | null {
  const match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate)
  if (!match) return null
  const [, y, mo, d, h, mi, s] = match.map(Number)
  return new Date(Date.UTC(y, mo - 1, d, h, mi, s))
}

function sameSignature(expected: string, provided: string): boolean {
  const a = Buffer.from(expected, 'utf8')
  const b = Buffer.from(provided, 'utf8')
  return a.length === b.length && timingSafeEqual(a, b)
}

interface Claimed {
  accessKeyId: string
  scope: string
  amzDate: string
  signedHeaders: string[]
  signature: string
}

function checkClaim(claim: Claimed, parts: Omit<CanonicalParts, 'signedHeaders'>, credentials: SigV4Credentials): Verification {
  const { accessKeyId } = claim
  const scopeParts = claim.scope.split('/')
  if (accessKeyId !== credentials.accessKeyId) return { ok: false, code: 'InvalidAccessKeyId', reason: `unknown access key ${accessKeyId}` }
  const [date, region, service, terminator] = scopeParts
  if (scopeParts.length !== 4 || terminator !== 'aws4_request' || !/^\d{8}$/.test(date) || !region || !service) {
    return { ok: false, code: 'AuthorizationQueryParametersError', reason: `malformed credential scope ${claim.scope}` }
  }
  if (!claim.amzDate.startsWith(date)) return { ok: false, code: 'SignatureDoesNotMatch', reason: 'the scope date is not the request date' }
  if (!claim.signedHeaders.includes('host')) return { ok: false, code: 'AccessDenied', reason: 'host is not a signed header' }
  const sorted = [...claim.signedHeaders].sort()
  if (sorted.join(';') !== claim.signedHeaders.join(';')) return { ok: false, code: 'SignatureDoesNotMatch', reason: 'signed headers are not sorted' }
  const canonical = canonicalRequest({ ...parts, signedHeaders: claim.signedHeaders })
  const expected = computeSignature(credentials.secretAccessKey, claim.amzDate, claim.scope, canonical)
  if (!sameSignature(expected, claim.signature)) return { ok: false, code: 'SignatureDoesNotMatch', reason: 'signature mismatch' }
  return { ok: true, accessKeyId, amzDate: claim.amzDate, scope: claim.scope, region, service, signedHeaders: claim.signedHeaders }
}

/** Query-string authentication (a presigned URL), including its expiry. */
export function verifyPresigned(request: SignedRequest, credentials: SigV4Credentials, now = new Date()): Verification {
  const { path, rawQuery, host } = splitUrl(request.url)
  const params = parseQuery(rawQuery)
  const get = (name: string) => params.find(([key]) => key === name)?.[1]
  const required = ['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature']
  const missing = required.filter((name) => get(name) === undefined)
  if (missing.length > 0) return { ok: false, code: 'AuthorizationQueryParametersError', reason: `missing ${missing.join(', ')}` }
  if (get('X-Amz-Algorithm') !== ALGORITHM) return { ok: false, code: 'AuthorizationQueryParametersError', reason: 'unsupported algorithm' }
  const amzDate = get('X-Amz-Date')!
  const signedAt = parseAmzDate(amzDate)
  if (!signedAt) return { ok: false, code: 'AuthorizationQueryParametersError', reason: 'malformed X-Amz-Date' }
  const expiresSeconds = Number(get('X-Amz-Expires'))
  if (!Number.isInteger(expiresSeconds) || expiresSeconds < 1 || expiresSeconds > MAX_EXPIRES_SECONDS) {
    return { ok: false, code: 'AuthorizationQueryParametersError', reason: 'X-Amz-Expires out of range' }
  }
  const credential = get('X-Amz-Credential')!
  const slash = credential.indexOf('/')
  const headers = host && headerValue(request.headers, 'host') === undefined ? { ...request.headers, host } : request.headers
  const verdict = checkClaim(
    {
      accessKeyId: credential.slice(0, slash),
      scope: credential.slice(slash + 1),
      amzDate,
      signedHeaders: get('X-Amz-SignedHeaders')!.split(';'),
      signature: get('X-Amz-Signature')!
    },
    {
      method: request.method,
      path,
      query: params.filter(([name]) => name !== 'X-Amz-Signature'),
      headers,
      // Presigned S3 requests never sign the body.
      payloadHash: 'UNSIGNED-PAYLOAD'
    },
    credentials
  )
  if (!verdict.ok) return verdict
  const expiresAt = new Date(signedAt.getTime() + expiresSeconds * 1000)
  if (now.getTime() > expiresAt.getTime()) return { ok: false, code: 'AccessDenied', reason: 'Request has expired' }
  return { ...verdict, expiresSeconds, expiresAt }
}

/**
 * Header authentication (`Authorization: AWS4-HMAC-SHA256 …`), as the SDK signs its own calls.
 * The payload hash is taken from x-amz-content-sha256 as sent; the body itself is not re-hashed.
 */
export function verifyAuthorizationHeader(request: SignedRequest, credentials: SigV4Credentials, now = new Date()): Verification {
  const authorization = headerValue(request.headers, 'authorization') ?? ''
  const match = /^AWS4-HMAC-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)$/.exec(authorization)
  if (!match) return { ok: false, code: 'AccessDenied', reason: 'malformed Authorization header' }
  const amzDate = headerValue(request.headers, 'x-amz-date')
  const signedAt = amzDate ? parseAmzDate(amzDate) : null
  if (!amzDate || !signedAt) return { ok: false, code: 'AccessDenied', reason: 'missing or malformed x-amz-date' }
  if (Math.abs(now.getTime() - signedAt.getTime()) > 15 * 60 * 1000) return { ok: false, code: 'AccessDenied', reason: 'request time too skewed' }
  const payloadHash = headerValue(request.headers, 'x-amz-content-sha256')
  if (!payloadHash) return { ok: false, code: 'AccessDenied', reason: 'missing x-amz-content-sha256' }
  const { path, rawQuery, host } = splitUrl(request.url)
  const headers = host && headerValue(request.headers, 'host') === undefined ? { ...request.headers, host } : request.headers
  const [credential, signedHeaders, signature] = match.slice(1)
  const slash = credential.indexOf('/')
  return checkClaim(
    { accessKeyId: credential.slice(0, slash), scope: credential.slice(slash + 1), amzDate, signedHeaders: signedHeaders.split(';'), signature },
    { method: request.method, path, query: parseQuery(rawQuery), headers, payloadHash },
    credentials
  )
}

/** Whichever authentication the request carries; an unsigned request is refused, as by a private bucket. */
export function verifyRequest(request: SignedRequest, credentials: SigV4Credentials, now = new Date()): Verification {
  const { rawQuery } = splitUrl(request.url)
  if (parseQuery(rawQuery).some(([name]) => name === 'X-Amz-Algorithm')) return verifyPresigned(request, credentials, now)
  if (headerValue(request.headers, 'authorization') !== undefined) return verifyAuthorizationHeader(request, credentials, now)
  return { ok: false, code: 'AccessDenied', reason: 'anonymous request' }
}
