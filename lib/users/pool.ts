import {
  AdminCreateUserCommand,
  AdminDeleteUserCommand,
  AdminDisableUserCommand,
  AdminGetUserCommand,
  CognitoIdentityProviderClient,
  DescribeUserPoolCommand
} from '@aws-sdk/client-cognito-identity-provider'
import { ApiError } from '../../schemas/errors.ts'
import { awsErrorClassifier } from '../aws-errors.ts'

export interface UserPoolOptions {
  region: string
  userPoolId: string
  /** The pool attribute that binds a user to a tenant, as tokens carry it (TENANT_CLAIM). */
  tenantAttribute: string
  inviteMessageAction: 'EMAIL' | 'SUPPRESS'
}

/** Attempts per call, retries of throttling and 5xx included (the SDK's standard retry). */
const MAX_ATTEMPTS = 3
/** One attempt is abandoned after this long, connecting included, and retried or answered 503. */
const REQUEST_TIMEOUT_MS = 10_000
/** The SDK's longest pause before a retry (MAXIMUM_RETRY_DELAY of its standard strategy). */
const MAX_RETRY_DELAY_MS = 20_000
/**
 * The longest one call to the pool can take, every attempt and pause included: what an invitation
 * that has written its row may still be waiting for (lib/users/members.ts, INVITATION_IN_FLIGHT_MS).
 */
export const USER_POOL_CALL_MAX_MS = MAX_ATTEMPTS * REQUEST_TIMEOUT_MS + (MAX_ATTEMPTS - 1) * MAX_RETRY_DELAY_MS

/**
 * What a user-pool failure means to a client: no answer, a 5xx, throttling or no credentials is
 * 503 `USER_POOL_UNAVAILABLE` (worth retrying); any other refusal (access denied, no such pool)
 * is 502 `USER_POOL_ERROR`.
 */
export const userPoolError = awsErrorClassifier({
  unavailable: 'USER_POOL_UNAVAILABLE',
  refused: 'USER_POOL_ERROR',
  service: 'The user pool',
  transient: ['TooManyRequestsException', 'InternalErrorException']
})

const named = (error: unknown, name: string) => (error as { name?: string })?.name === name

/**
 * What a failed DescribeUserPool says about the deployment, in words an operator acts on: the pool
 * id and region when the pool does not exist, credentials when they are missing or refused, the
 * endpoint when nothing answered (often a wrong region).
 */
export function describePoolFailure(error: unknown, options: Pick<UserPoolOptions, 'region' | 'userPoolId'>): string {
  const failure = error as { name?: string; message?: string; code?: string }
  const name = failure?.name ?? 'Error'
  const where = `user pool ${options.userPoolId} in region ${options.region}`
  if (name === 'ResourceNotFoundException') return `${where} does not exist (ResourceNotFoundException): check COGNITO_USER_POOL_ID and COGNITO_REGION`
  if (name === 'CredentialsProviderError') return `no AWS credentials for ${where} (CredentialsProviderError): ${failure.message}`
  if (['UnrecognizedClientException', 'InvalidSignatureException', 'ExpiredTokenException', 'NotAuthorizedException'].includes(name)) {
    return `the AWS credentials were refused for ${where} (${name}): bad or expired credentials, or a wrong region`
  }
  if (name === 'AccessDeniedException') return `the credentials may not describe ${where} (AccessDeniedException): grant cognito-idp:DescribeUserPool`
  if (failure?.code === 'ENOTFOUND' || failure?.code === 'ECONNREFUSED' || name === 'TimeoutError') {
    return `the user-pool endpoint for ${where} did not answer (${failure.code ?? name}): check COGNITO_REGION and AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER`
  }
  return `${where} could not be described (${name}): ${failure?.message ?? ''}`
}

/**
 * The user-pool operations the service needs, on one pool. Credentials and the endpoint come from
 * the AWS SDK's own defaults: the default provider chain, and AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER
 * or AWS_ENDPOINT_URL for a pool that is not on AWS. Every operation here is idempotent, so a
 * caller that failed part-way repeats it (lib/users/members.ts).
 */
export function createUserPool(options: UserPoolOptions) {
  const client = new CognitoIdentityProviderClient({
    region: options.region,
    maxAttempts: MAX_ATTEMPTS,
    // Without throwOnRequestTimeout the SDK only warns past requestTimeout: a call would have no end.
    requestHandler: { connectionTimeout: 3000, requestTimeout: REQUEST_TIMEOUT_MS, throwOnRequestTimeout: true }
  })
  const UserPoolId = options.userPoolId

  /** The pool user known by `username` (its email or its sub): its sub and tenant, or null when there is none. */
  async function find(username: string): Promise<{ sub: string; tenant: string | null } | null> {
    try {
      const user = await client.send(new AdminGetUserCommand({ UserPoolId, Username: username }))
      const attributes = new Map((user.UserAttributes ?? []).map((attribute) => [attribute.Name, attribute.Value]))
      return { sub: attributes.get('sub') ?? user.Username!, tenant: attributes.get(options.tenantAttribute) ?? null }
    } catch (error) {
      if (named(error, 'UserNotFoundException')) return null
      throw userPoolError(error, 'look a user up')
    }
  }

  return {
    userPoolId: UserPoolId,
    region: options.region,

    /**
     * Creates the pool user of a member of `tenant`, or adopts the one a failed earlier attempt
     * left (same email, same tenant). Returns its sub. A pool user with this email bound to another
     * tenant, or to none, is refused with 409: the pool is shared by every tenant.
     */
    async invite(input: { email: string; name: string; tenant: string; temporaryPassword?: string }): Promise<string> {
      try {
        const created = await client.send(
          new AdminCreateUserCommand({
            UserPoolId,
            Username: input.email,
            UserAttributes: [
              { Name: 'email', Value: input.email },
              { Name: 'name', Value: input.name },
              { Name: options.tenantAttribute, Value: input.tenant }
            ],
            ...(input.temporaryPassword ? { TemporaryPassword: input.temporaryPassword } : {}),
            ...(options.inviteMessageAction === 'SUPPRESS' ? { MessageAction: 'SUPPRESS' as const } : { DesiredDeliveryMediums: ['EMAIL' as const] })
          })
        )
        const sub = created.User?.Attributes?.find((attribute) => attribute.Name === 'sub')?.Value
        if (sub) return sub
        const found = await find(input.email)
        if (!found) throw new Error('AdminCreateUser returned no sub and the user cannot be found')
        return found.sub
      } catch (error) {
        if (!named(error, 'UsernameExistsException')) throw userPoolError(error, 'create the user')
      }
      const existing = await find(input.email)
      if (existing?.tenant === input.tenant) return existing.sub
      const holder = existing?.tenant ? 'another tenant' : 'no tenant (a platform user)'
      throw new ApiError('MEMBER_IN_OTHER_TENANT', `The user pool already holds a user ${input.email}, bound to ${holder}`)
    },

    find,

    /** Disables, then deletes, the pool user known by `username` (sub or email); one already gone is fine. */
    async remove(username: string): Promise<void> {
      try {
        await client.send(new AdminDisableUserCommand({ UserPoolId, Username: username }))
        await client.send(new AdminDeleteUserCommand({ UserPoolId, Username: username }))
      } catch (error) {
        if (!named(error, 'UserNotFoundException')) throw userPoolError(error, 'delete the user')
      }
    },

    /** DescribeUserPool: resolves with the pool's name, or throws the SDK's error. */
    async describe(): Promise<string> {
      const { UserPool } = await client.send(new DescribeUserPoolCommand({ UserPoolId }))
      return UserPool?.Name ?? UserPoolId
    },

    close() {
      client.destroy()
    }
  }
}

export type UserPool = ReturnType<typeof createUserPool>
