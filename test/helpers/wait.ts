import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Polls until `check` is true or the deadline passes, then reports which. Tests assert the
 * outcome, never how long it took.
 */
export async function eventually(check: () => boolean | Promise<boolean>, deadlineMs = 5000, intervalMs = 25): Promise<boolean> {
  const until = Date.now() + deadlineMs
  while (Date.now() < until) {
    if (await check()) return true
    await sleep(intervalMs)
  }
  return check()
}
