import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import {
  AdminAddUserToGroupCommand,
  AdminCreateUserCommand,
  AdminInitiateAuthCommand,
  AdminSetUserPasswordCommand,
  InitiateAuthCommand,
  ListUsersCommand
} from '@aws-sdk/client-cognito-identity-provider'
import { embeddedCognitoClient, startEmbeddedCognito, type EmbeddedCognito } from '../../lib/embedded/cognito.ts'

export interface PoolUser {
  username: string
  enabled: boolean
  status: string
  attributes: Record<string, string>
}

export interface TestCognito extends EmbeddedCognito {
  /** cognito-local's data, and the coordinates `npm run token -- --dir` reads. */
  dataDir: string
  /** The variables that point the service at this pool, as for a pool that is not on AWS. */
  env: Record<string, string>
  /** Every user of the pool, by email. */
  users(): Promise<Map<string, PoolUser>>
  /** Gives a pool user a permanent password, as completing the invitation would. */
  setPassword(email: string, password: string): Promise<void>
  /** Logs in with the app client (USER_PASSWORD_AUTH), as a front end would: both tokens. */
  login(email: string, password: string): Promise<{ idToken: string; accessToken: string }>
  /** Logs in through the admin API (ADMIN_USER_PASSWORD_AUTH). */
  adminLogin(email: string, password: string): Promise<{ idToken: string; accessToken: string }>
  /** A platform operator: a pool user in the admin group, logged in; returns its ID token. */
  platformAdmin(email?: string): Promise<string>
  /** Stops the server (its data kept), so that every call to the pool fails to connect. */
  pause(): Promise<void>
  /** Starts it again on the same port with the same data: the same pool, users and issuer. */
  resume(): Promise<void>
}

export const TEST_PASSWORD = 'Correct-Horse-9'

/**
 * A real cognito-local on a free port with a fresh data directory, its pool (custom:tenant_id),
 * app client and admin group made; stopped and removed by `stop()`. The service reaches it through
 * the AWS SDK's own endpoint variable, set here for the test process, as a deployment would set it.
 */
export async function startTestCognito(): Promise<TestCognito> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'cognito-local-'))
  const cognito = await startEmbeddedCognito({ dataDir })
  let current: EmbeddedCognito | null = cognito
  process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = cognito.endpoint
  if (!process.env.AWS_ACCESS_KEY_ID) {
    process.env.AWS_ACCESS_KEY_ID = cognito.credentials.accessKeyId
    process.env.AWS_SECRET_ACCESS_KEY = cognito.credentials.secretAccessKey
  }
  // The helper's own client, which outlives a pause of the server.
  const client = embeddedCognitoClient(cognito)
  const { userPoolId, clientId } = cognito
  const tokens = (result: { AuthenticationResult?: { IdToken?: string; AccessToken?: string } }) => {
    if (!result.AuthenticationResult?.IdToken) throw new Error(`login did not return tokens: ${JSON.stringify(result)}`)
    return { idToken: result.AuthenticationResult.IdToken, accessToken: result.AuthenticationResult.AccessToken! }
  }
  const setPassword = async (email: string, password: string) => {
    await client.send(new AdminSetUserPasswordCommand({ UserPoolId: userPoolId, Username: email, Password: password, Permanent: true }))
  }
  const login = async (email: string, password: string) =>
    tokens(
      await client.send(
        new InitiateAuthCommand({ ClientId: clientId, AuthFlow: 'USER_PASSWORD_AUTH', AuthParameters: { USERNAME: email, PASSWORD: password } })
      )
    )
  return {
    ...cognito,
    client,
    dataDir,
    env: {
      COGNITO_REGION: cognito.region,
      COGNITO_USER_POOL_ID: userPoolId,
      JWT_ISSUER: cognito.issuer,
      JWT_CLIENT_ID: clientId
    },
    async users() {
      const { Users = [] } = await client.send(new ListUsersCommand({ UserPoolId: userPoolId }))
      const byEmail = new Map<string, PoolUser>()
      for (const user of Users) {
        const attributes = Object.fromEntries((user.Attributes ?? []).map((a) => [a.Name!, a.Value ?? '']))
        byEmail.set(attributes.email, { username: user.Username!, enabled: user.Enabled ?? false, status: user.UserStatus ?? '', attributes })
      }
      return byEmail
    },
    setPassword,
    async login(email, password) {
      return tokens(
        await client.send(
          new InitiateAuthCommand({ ClientId: clientId, AuthFlow: 'USER_PASSWORD_AUTH', AuthParameters: { USERNAME: email, PASSWORD: password } })
        )
      )
    },
    async adminLogin(email, password) {
      return tokens(
        await client.send(
          new AdminInitiateAuthCommand({
            UserPoolId: userPoolId,
            ClientId: clientId,
            AuthFlow: 'ADMIN_USER_PASSWORD_AUTH',
            AuthParameters: { USERNAME: email, PASSWORD: password }
          })
        )
      )
    },
    async platformAdmin(email = 'operator@platform.test') {
      await client.send(new AdminCreateUserCommand({ UserPoolId: userPoolId, Username: email, MessageAction: 'SUPPRESS' }))
      await setPassword(email, TEST_PASSWORD)
      await client.send(new AdminAddUserToGroupCommand({ UserPoolId: userPoolId, Username: email, GroupName: 'admin' }))
      const { idToken } = await login(email, TEST_PASSWORD)
      return idToken
    },
    async pause() {
      await current?.stop()
      current = null
    },
    async resume() {
      current = await startEmbeddedCognito({ dataDir, port: cognito.port })
      if (current.movedFrom !== null) throw new Error(`cognito-local could not take port ${cognito.port} again`)
    },
    async stop() {
      client.destroy()
      await current?.stop()
      current = null
      await rm(dataDir, { recursive: true, force: true })
    }
  }
}
