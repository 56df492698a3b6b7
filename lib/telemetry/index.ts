/**
 * OpenTelemetry tracing, off unless configured, and the front door of lib/telemetry.
 *
 * Nothing of OpenTelemetry is imported here: `startTracing` loads it (sdk.ts) only when an OTLP
 * endpoint is configured, so a process without one never loads a module of it. It must run before
 * pg, ioredis and the AWS SDK are first imported: under ESM their instrumentations see them only
 * through the loader hook registered here, which wraps the modules imported after it.
 */
import { register } from 'node:module'
import type { Tracing } from './sdk.ts'

export type { Tracing } from './sdk.ts'

type Env = Record<string, string | undefined>

/**
 * True when the standard OTel variables ask for traces: an OTLP endpoint (for every signal or for
 * traces), and neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none.
 */
export function tracingConfigured(env: Env = process.env): boolean {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim()) return false
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((name) => name.trim().toLowerCase())
  return !exporters.includes('none')
}

/**
 * Starts tracing when configured (see tracingConfigured) and returns its handle; null, having
 * loaded nothing, otherwise.
 */
export async function startTracing(env: Env = process.env): Promise<Tracing | null> {
  if (!tracingConfigured(env)) return null
  // The loader hook wraps only the modules an instrumentation asks for (pg, ioredis, the AWS
  // SDK's clients), not every module of the process: the instrumentations name them over this
  // channel, and the hook has them all before the first of them is imported.
  const { createAddHookMessageChannel } = await import('import-in-the-middle')
  const { registerOptions, waitForAllMessagesAcknowledged } = createAddHookMessageChannel()
  register('import-in-the-middle/hook.mjs', import.meta.url, registerOptions)
  const { startSdk } = await import('./sdk.ts')
  const tracing = startSdk(env)
  await waitForAllMessagesAcknowledged()
  return tracing
}
