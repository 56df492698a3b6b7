/**
 * lib/readiness.ts on its own: checks run at most once per cache period whoever asks, and a check
 * that starts or stops failing is told once, not at every probe.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createReadiness } from '../lib/readiness.ts'

t.test('checks are shared for the cache period, and each change of a check is told once', async (t) => {
  const changes: [string, boolean, string | undefined, boolean][] = []
  const readiness = createReadiness({ cacheMs: 100, onChange: (...change) => changes.push(change) })
  let calls = 0
  let up = false
  readiness.addCheck('store', async () => {
    calls++
    if (!up) throw new Error('not there yet')
  })

  const first = await Promise.all(Array.from({ length: 50 }, () => readiness.evaluate()))
  t.equal(calls, 1, '50 probes at once, one check')
  t.same(first[0], { ready: false, checks: { store: { ok: false, detail: 'not there yet' } } })
  await readiness.evaluate()
  t.equal(calls, 1, 'a probe within the period is answered from it')

  await sleep(120)
  up = true
  t.equal((await readiness.evaluate()).ready, true)
  await sleep(120)
  up = false
  await readiness.evaluate()
  await sleep(120)
  await readiness.evaluate()
  t.same(
    changes,
    [
      ['store', false, 'not there yet', true],
      ['store', true, undefined, false],
      ['store', false, 'not there yet', false]
    ],
    'not passing yet at start, then passing, then failing: three changes, the failure told once'
  )

  readiness.markShuttingDown()
  t.same((await readiness.evaluate()).checks.shutdown, { ok: false, detail: 'shutting down' }, 'shutdown shows at once, cache or not')
})
