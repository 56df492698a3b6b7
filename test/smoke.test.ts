import t from 'tap'
import { createTenant, setupApp } from './helpers/app.ts'

t.test('tenant-scoped health check runs inside the tenant schema', async (t) => {
  const { app } = await setupApp(t)
  await createTenant(app, 'acme-corp')
  const response = await app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': 'acme-corp' } })
  t.equal(response.statusCode, 200)
  t.equal(response.json().database.currentSchema, 'acme-corp')
})
