import { once } from 'node:events'
import net, { type AddressInfo } from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { createTenant, setupApp } from './helpers/app.ts'
import { render } from './helpers/kustomize.ts'
import { eventually } from './helpers/wait.ts'

interface Rule {
  alert?: string
  record?: string
  expr: string
  for?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
}

/** Series Prometheus itself attaches to every target; the service cannot export them. */
const PROMETHEUS_SERIES = new Set(['up'])
/** Labels Prometheus adds to every scraped series (target labels). */
const TARGET_LABELS = new Set(['job', 'instance', 'namespace', 'pod', 'service', 'container', 'endpoint'])
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan'])

/**
 * The series selectors of a PromQL expression: metric names with the label names they match on.
 * Enough PromQL for rule files: strings, grouping clauses, ranges, numbers and durations are
 * skipped, and an identifier followed by "(" is a function or an aggregation.
 */
function selectors(expr: string): { name: string; labels: string[] }[] {
  const text = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    // Numbers and durations (0.5, 1e3, 5m): digits never start a name.
    .replace(/(?<![a-zA-Z0-9_:])\d[\w.]*/g, ' ')
  const found: { name: string; labels: string[] }[] = []
  const pattern = /([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(\{[^}]*\})|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g
  for (const match of text.matchAll(pattern)) {
    if (match[2] !== undefined) {
      const labels = [...match[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)].map((m) => m[1])
      if (match[1]) found.push({ name: match[1], labels })
      continue
    }
    const name = match[3]
    if (match[4] !== undefined || KEYWORDS.has(name.toLowerCase())) continue
    found.push({ name, labels: [] })
  }
  return found
}

// The rules are those the deployment installs: the PrometheusRule of the rendered kustomize base.
const deployDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../deploy')
const prometheusRules = (await render(deployDir)).filter((resource) => resource.kind === 'PrometheusRule')
if (prometheusRules.length !== 1) throw new Error(`expected one PrometheusRule in deploy/, found ${prometheusRules.length}`)
const document = prometheusRules[0].spec as { groups: { name: string; rules: Rule[] }[] }
const rules = document.groups.flatMap((group) => group.rules)

t.test('the PromQL reader finds metric names and matchers', async (t) => {
  t.same(selectors('sum by (job, le) (rate(foo_bucket{job="x", route!="a{b}"}[5m])) / ignoring(le) bar > 0.5 and on(job) baz_total offset 5m'), [
    { name: 'foo_bucket', labels: ['job', 'route'] },
    { name: 'bar', labels: [] },
    { name: 'baz_total', labels: [] }
  ])
  t.same(selectors('absent(up{job="tenant-service"})'), [{ name: 'up', labels: ['job'] }])
})

t.test('the rules file is well formed', async (t) => {
  t.ok(document.groups.length > 0)
  t.ok(rules.length >= 8, `${rules.length} rules`)
  const names = new Set<string>()
  for (const rule of rules) {
    t.ok(rule.alert, 'every rule is an alert')
    t.notOk(names.has(rule.alert!), `${rule.alert} is named once`)
    names.add(rule.alert!)
    t.type(rule.expr, 'string', `${rule.alert} has an expression`)
    t.match(rule.labels?.severity, /^(critical|warning)$/, `${rule.alert} has a severity`)
    t.ok(rule.annotations?.summary, `${rule.alert} has a summary`)
    if (rule.for !== undefined) t.match(rule.for, /^\d+[smh]$/, `${rule.alert}: for is a duration`)
    t.ok(selectors(rule.expr).length > 0, `${rule.alert} reads at least one series`)
  }
  const exprs = rules.map((rule) => rule.expr).join('\n')
  for (const [what, series] of [
    ['readiness', 'tenant_service_ready'],
    ['5xx ratio', 'http_request_duration_seconds_count'],
    ['pool saturation', 'tenant_service_db_pool_waiting_requests'],
    ['p99 latency', 'http_request_duration_seconds_bucket'],
    ['migration lag', 'tenant_service_tenants_behind_migrations'],
    ['JWKS failures', 'tenant_service_jwks_fetch_failures_total']
  ]) {
    t.match(exprs, series, `an alert covers ${what}`)
  }
  t.match(exprs, /histogram_quantile\(0\.99/, 'p99 comes from the duration histogram')
})

t.test('every series an alert reads is one the service exports, with the labels it matches on', async (t) => {
  const context = await setupApp(t)
  const { app, auth } = context
  // Traffic, so that labelled series exist: successes, client errors, a 404 and a tenant.
  await createTenant(context, 'acme')
  await app.inject({ method: 'GET', url: '/', headers: auth.tenantUser('acme') })
  await app.inject({ method: 'GET', url: '/users/not-a-uuid', headers: auth.tenantUser('acme') })
  await app.inject({ method: 'GET', url: '/no/such/route' })
  await app.inject({ method: 'GET', url: '/health/ready' })
  // And a request aborted for real: a client that leaves while its body is still arriving.
  await app.listen({ port: 0, host: '127.0.0.1' })
  const socket = net.connect((app.server.address() as AddressInfo).port, '127.0.0.1')
  const headers = { ...auth.tenantUser('acme'), 'content-type': 'application/json', 'content-length': '100', expect: '100-continue' }
  socket.write(
    `POST /users HTTP/1.1\r\nhost: localhost\r\n${Object.entries(headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('')}\r\n`
  )
  // "100 Continue": the service has the request and waits for its body.
  await once(socket, 'data')
  socket.end('{"email":')
  socket.destroy()
  const scrape = async () => (await app.inject({ method: 'GET', url: '/metrics', headers: auth.admin() })).body
  t.ok(await eventually(async () => (await scrape()).includes('tenant_service_http_requests_aborted_total{')), 'the abort is counted')

  const response = await app.inject({ method: 'GET', url: '/metrics', headers: auth.admin() })
  t.equal(response.statusCode, 200)
  const labelsOf = new Map<string, Set<string>>()
  for (const line of response.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line)
    if (!match) continue
    const labels = labelsOf.get(match[1]) ?? new Set<string>()
    for (const [, label] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labels.add(label)
    labelsOf.set(match[1], labels)
  }
  t.ok(labelsOf.has('http_request_duration_seconds_bucket'), 'histograms are exported with their _bucket series')

  for (const rule of rules) {
    for (const { name, labels } of selectors(rule.expr)) {
      if (PROMETHEUS_SERIES.has(name)) {
        t.pass(`${rule.alert}: ${name} is Prometheus's own`)
        continue
      }
      t.ok(labelsOf.has(name), `${rule.alert}: the service exports ${name}`)
      for (const label of labels) {
        if (TARGET_LABELS.has(label)) continue
        t.ok(labelsOf.get(name)?.has(label), `${rule.alert}: ${name} carries the label ${label}`)
      }
    }
  }
})
