import { existsSync } from 'node:fs'
import { chromium } from 'playwright-core'
import t from 'tap'
import { setupApp } from './helpers/app.ts'

const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic'
]

const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (Debian: apt-get install chromium); the docs page is not checked in a browser`

t.test('the docs page in a real browser', { skip }, async (t) => {
  const { app } = await setupApp(t)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  page.setDefaultTimeout(30_000)
  const pageErrors: string[] = []
  page.on('pageerror', (error) => pageErrors.push(error.message))
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text())
  })

  const response = await page.goto(`${base}/docs`)
  t.equal(response?.status(), 200, '/docs answers')
  await page.locator('.swagger-ui .opblock').first().waitFor()
  t.match(await page.locator('.swagger-ui .info .title').innerText(), /Tenant service/)

  const operations = await page.locator('.opblock').evaluateAll((blocks) =>
    blocks.map((block) => {
      const method = block.querySelector('.opblock-summary-method')?.textContent?.trim() ?? ''
      const path = block.querySelector('.opblock-summary-path')?.getAttribute('data-path') ?? ''
      return `${method} ${path}`.replace(/\u200b/g, '')
    })
  )
  for (const operation of ['POST /auth/tenants', 'GET /auth/tenants/{id}', 'POST /users', 'GET /users/{id}', 'GET /health/live', 'GET /health/ready']) {
    t.ok(operations.includes(operation), `${operation} is on the page`)
  }
  t.ok(
    operations.some((operation) => / \/files/.test(operation)),
    'the file operations are on the page'
  )
  t.notOk(
    operations.some((operation) => operation.includes('/metrics')),
    '/metrics is not documented'
  )
  t.ok(await page.locator('.swagger-ui .btn.authorize').isVisible(), 'the bearer token can be entered (Authorize)')

  // Try it out → Execute on the liveness probe, answered by the running service.
  const live = page.locator('.opblock-get', { has: page.locator('.opblock-summary-path[data-path="/health/live"]') })
  await live.locator('.opblock-summary').click()
  await live.locator('button.try-out__btn').click()
  await live.locator('button.execute').click()
  const status = live.locator('.live-responses-table .response .response-col_status').first()
  await status.waitFor()
  t.equal((await status.innerText()).trim(), '200', 'Execute shows the 200 of GET /health/live')
  t.match(await live.locator('.live-responses-table .response .response-col_description').first().innerText(), /"status": "ok"/)

  t.same(pageErrors, [], 'no script errors or blocked resources on the page')
})
