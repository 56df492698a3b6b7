/** The label value of every tenant outside the top N. No tenant id can take it (ids start with a letter). */
export const OTHER_TENANTS = '_other'

export interface TopTenantsOptions {
  /** How many tenants get a series of their own. */
  size?: number
  /** Length of the window whose busiest tenants are featured in the next one. */
  windowMs?: number
  /** Distinct tenants counted per window; past it, newcomers are not counted until the next window. */
  maxTracked?: number
  /** Told which tenants lost their series, so their series can be removed. */
  onDrop?: (tenants: string[]) => void
  now?: () => number
}

/**
 * Which tenants get a per-tenant request series: the `size` busiest of the previous window, plus
 * newcomers while there is room. Everyone else is counted under OTHER_TENANTS, so the series
 * count stays at most size + 1 however many tenants there are. A tenant that drops out of the top
 * loses its series (through onDrop); if it comes back its counter starts again at zero, which
 * PromQL's rate() reads as a counter reset.
 */
export function createTopTenants(options: TopTenantsOptions = {}) {
  const size = options.size ?? 20
  const windowMs = options.windowMs ?? 60_000
  const maxTracked = options.maxTracked ?? 100_000
  const now = options.now ?? Date.now
  let featured = new Set<string>()
  let counts = new Map<string, number>()
  let windowEnds = now() + windowMs

  function rotate(at: number) {
    const busiest = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, size)
    const next = new Set(busiest.map(([tenant]) => tenant))
    const dropped = [...featured].filter((tenant) => !next.has(tenant))
    featured = next
    counts = new Map()
    windowEnds = at + windowMs
    if (dropped.length > 0) options.onDrop?.(dropped)
  }

  return {
    /** Counts one request of `tenant` and returns the label value it is exported under. */
    record(tenant: string): string {
      const at = now()
      if (at >= windowEnds) rotate(at)
      const count = counts.get(tenant)
      if (count !== undefined) counts.set(tenant, count + 1)
      else if (counts.size < maxTracked) counts.set(tenant, 1)
      if (featured.has(tenant)) return tenant
      if (featured.size < size) {
        featured.add(tenant)
        return tenant
      }
      return OTHER_TENANTS
    },
    featured(): ReadonlySet<string> {
      return featured
    }
  }
}
