import { ApiError, serviceUnavailable, type ErrorCode } from '../schemas/errors.ts'

/** Error names of every AWS service that mean "not now" rather than "no". */
const TRANSIENT_EVERYWHERE = ['TimeoutError', 'ThrottlingException', 'CredentialsProviderError', 'AbortError']

export interface AwsErrorCodes {
  /** What a failure worth retrying is: no answer, a 5xx, throttling, no credentials (503). */
  unavailable: ErrorCode
  /** What any other refusal is: access denied, no such resource (502). */
  refused: ErrorCode
  /** The service, in messages: "Object storage", "The user pool". */
  service: string
  /** The service's own names for transient failures, beside the ones every AWS service shares. */
  transient?: readonly string[]
}

/**
 * A classifier of one AWS service's failures into what they mean to a client. The SDK's error stays
 * attached as `cause`, for the log; an ApiError passes through unchanged.
 */
export function awsErrorClassifier(codes: AwsErrorCodes) {
  const transientNames = new Set([...TRANSIENT_EVERYWHERE, ...(codes.transient ?? [])])
  return function classify(error: unknown, action: string): ApiError {
    if (error instanceof ApiError) return error
    const failure = error as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } }
    const status = failure?.$metadata?.httpStatusCode
    const transient = status === undefined || status >= 500 || status === 429 || transientNames.has(failure?.name ?? '')
    // A connection or an answer that did not come within the client's timeouts: said so, so the log
    // tells a store that hangs from one that refuses connections.
    const timedOut = failure?.name === 'TimeoutError' || failure?.code === 'ETIMEDOUT'
    const apiError = timedOut
      ? serviceUnavailable(codes.unavailable, `${codes.service} did not answer in time (${action}); retry shortly`)
      : transient
        ? serviceUnavailable(codes.unavailable, `${codes.service} is not available (${action}); retry shortly`)
        : new ApiError(codes.refused, `${codes.service} refused to ${action}`)
    return Object.assign(apiError, { cause: error })
  }
}
