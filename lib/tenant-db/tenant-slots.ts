import { serviceUnavailable } from '../../schemas/errors.ts'

interface Waiter {
  granted: (error: Error | null) => void
  timer: NodeJS.Timeout
}

/**
 * How many pooled connections each tenant's handles hold, bounded (TENANT_MAX_CONNECTIONS), so
 * that whatever one tenant does (slow statements, held locks, a flood of writes) the rest of the
 * pool stays for the others. A handle past its tenant's bound waits for one of that tenant's
 * connections to come back, in order, as long as it would wait for the pool (PG_ACQUIRE_TIMEOUT_MS);
 * past that it fails with 503 DATABASE_BUSY. Read lanes are shared and not counted.
 */
export class TenantSlots {
  readonly #max: number
  readonly #waitMs: number
  readonly #held = new Map<string, number>()
  readonly #waiting = new Map<string, Waiter[]>()

  constructor(max: number, waitMs: number) {
    this.#max = max
    this.#waitMs = waitMs
  }

  /** Calls `granted(null)` once the tenant may take a connection (at once when under its bound), or `granted(error)`. */
  take(tenant: string, granted: (error: Error | null) => void): void {
    const held = this.#held.get(tenant) ?? 0
    if (held < this.#max) {
      this.#held.set(tenant, held + 1)
      return granted(null)
    }
    let queue = this.#waiting.get(tenant)
    if (!queue) this.#waiting.set(tenant, (queue = []))
    const waiter: Waiter = {
      granted,
      timer: setTimeout(() => {
        const current = this.#waiting.get(tenant)
        const at = current?.indexOf(waiter) ?? -1
        if (at !== -1) current!.splice(at, 1)
        if (current?.length === 0) this.#waiting.delete(tenant)
        granted(serviceUnavailable('DATABASE_BUSY', 'This tenant holds as many database connections as it may, and none came back in time; retry shortly'))
      }, this.#waitMs)
    }
    queue.push(waiter)
  }

  /** A connection of the tenant went back to the pool: the next waiter of the tenant takes its place. */
  give(tenant: string): void {
    const queue = this.#waiting.get(tenant)
    const next = queue?.shift()
    if (next) {
      if (queue!.length === 0) this.#waiting.delete(tenant)
      clearTimeout(next.timer)
      return next.granted(null)
    }
    const held = (this.#held.get(tenant) ?? 1) - 1
    if (held > 0) this.#held.set(tenant, held)
    else this.#held.delete(tenant)
  }

  /** Connections the tenant's handles hold or are about to. */
  held(tenant: string): number {
    return this.#held.get(tenant) ?? 0
  }
}
