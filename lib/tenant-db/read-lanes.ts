import type pg from 'pg'

/** A pooled connection that carries the reads of many requests at once. */
export interface Lane {
  readonly client: pg.PoolClient
  /** Queries written to it and not answered yet. */
  inflight: number
  /** performance.now() when it last answered a query, or went busy from idle. */
  progressAt: number
  /** Handed out since the last idle sweep. */
  used: boolean
  /**
   * False once the lane is out of service (idle, failed or closing). A handle that still holds it
   * must not write to its connection again: back in the pool, it may be inside another request's
   * transaction.
   */
  open: boolean
}

interface OpenLane extends Lane {
  onFailure: (reason?: Error) => void
}

/** More queries than this in flight on every lane: the next read takes a connection of its own. */
const MAX_LANE_DEPTH = 32
/**
 * A busy lane that has answered nothing for this long holds a slow query: new reads go elsewhere,
 * so that only the reads already queued behind it wait for it. A read costs PostgreSQL tens of
 * microseconds (BENCHMARKS.md, R1), so a healthy lane under load is never silent this long (C22).
 */
export const STALL_MS = 20
/** A lane not handed out for one to two sweeps goes back to the pool: an idle service holds none. */
const IDLE_SWEEP_MS = 1000

export type LaneCallback = (error: Error | null, lane: Lane | null) => void

/**
 * Connections shared by the reads of all requests and tenants (DESIGN §3: the context rides in
 * the query's own flight).
 *
 * A read's query is one self-contained flight: the tenant's context statement and the query,
 * ended by a Sync, which ends the implicit transaction the context lived in. Nothing of one flight
 * survives into the next, so flights of different requests and tenants can follow each other on
 * one connection, pipelined, without either waiting for the connection to be free. PostgreSQL then
 * works through several requests per wake-up and answers them in one read, instead of every
 * request checking a connection out of the pool and back: half the database CPU per read
 * (BENCHMARKS.md, R1 and C12).
 *
 * Each read goes to the lane with the fewest queries in flight, and never to a stalled one (busy
 * and silent for STALL_MS): a slow query holds up only the reads queued behind it before it was
 * seen to stall. Lanes open as load needs them, up to `size`, taken from the pool (which still
 * bounds the connections). When no lane can take a read (all stalled, or `MAX_LANE_DEPTH` deep),
 * `acquire` answers null and the read takes a pooled connection of its own, with the pool's bounded
 * wait (PG_ACQUIRE_TIMEOUT_MS) and its 503. Writes never use lanes: a transaction spans several
 * flights and needs a connection to itself. A lane left unused for a second or two goes back to
 * the pool, so a quiet service holds no connection out of it.
 */
export class ReadLanes {
  readonly #pool: pg.Pool
  readonly #size: number
  readonly #lanes: OpenLane[] = []
  #opening = 0
  /** Reads waiting for the first lane to open. */
  #waiting: LaneCallback[] = []
  #closed = false
  #sweeper: NodeJS.Timeout | null = null

  constructor(pool: pg.Pool, size: number) {
    this.#pool = pool
    this.#size = size
  }

  /**
   * Calls back with a lane (synchronously when one is open), with null when there is no lane to
   * use (none configured, all too deep, or closing), or with the error that opening one met.
   */
  acquire(callback: LaneCallback): void {
    if (this.#closed || this.#size === 0) return callback(null, null)
    const now = performance.now()
    let best: Lane | null = null
    for (const lane of this.#lanes) {
      if (lane.inflight > 0 && now - lane.progressAt > STALL_MS) continue
      if (best === null || lane.inflight < best.inflight) best = lane
    }
    // Another lane opens only when the quietest usable one is busy: light load needs one.
    if ((best === null || best.inflight > 0) && this.#lanes.length + this.#opening < this.#size) this.#open()
    if (best === null) {
      // Waiting is worth it only for the first lane, which opens in a round trip.
      if (this.#lanes.length === 0) return void this.#waiting.push(callback)
      return callback(null, null)
    }
    if (best.inflight >= MAX_LANE_DEPTH) return callback(null, null)
    best.used = true
    callback(null, best)
  }

  /** Gives back to the pool the lanes nobody was handed since the last sweep and that are not busy. */
  #sweep(): void {
    for (const lane of [...this.#lanes]) {
      if (lane.used || lane.inflight > 0) lane.used = false
      else this.#remove(lane)?.release()
    }
    if (this.#lanes.length === 0 && this.#sweeper) {
      clearInterval(this.#sweeper)
      this.#sweeper = null
    }
  }

  /** Takes a lane out of service; answers its connection, or null if it was out already. */
  #remove(lane: OpenLane): pg.PoolClient | null {
    const index = this.#lanes.indexOf(lane)
    if (index === -1) return null
    this.#lanes.splice(index, 1)
    lane.open = false
    lane.client.off('error', lane.onFailure)
    lane.client.off('end', lane.onFailure)
    return lane.client
  }

  #open(): void {
    this.#opening++
    this.#pool.connect((error, client, release) => {
      this.#opening--
      const waiting = this.#waiting
      this.#waiting = []
      if (error || !client) {
        for (const callback of waiting) callback(error ?? new Error('No connection'), null)
        return
      }
      if (this.#closed) {
        release()
        for (const callback of waiting) callback(null, null)
        return
      }
      // A lane whose connection fails is dropped and its connection destroyed; the queries in
      // flight on it fail with the connection, and the next reads open another.
      const lane: OpenLane = {
        client,
        inflight: 0,
        progressAt: performance.now(),
        used: true,
        open: true,
        onFailure: (reason?: Error) => {
          if (this.#remove(lane)) release(reason ?? true)
        }
      }
      client.on('error', lane.onFailure)
      client.on('end', lane.onFailure)
      this.#lanes.push(lane)
      if (!this.#sweeper) {
        this.#sweeper = setInterval(() => this.#sweep(), IDLE_SWEEP_MS)
        this.#sweeper.unref()
      }
      for (const callback of waiting) callback(null, lane)
    })
  }

  /**
   * Stops handing out lanes and gives their connections back once their queries are answered; a
   * lane still busy after `graceMs` (a connection that stopped answering) is destroyed.
   */
  async close(graceMs = 10_000): Promise<void> {
    this.#closed = true
    if (this.#sweeper) clearInterval(this.#sweeper)
    this.#sweeper = null
    for (const callback of this.#waiting.splice(0)) callback(null, null)
    const deadline = Date.now() + graceMs
    await Promise.all(
      [...this.#lanes].map(async (lane) => {
        const client = this.#remove(lane)
        if (!client) return
        // Polled: closing is rare, and its queries take milliseconds.
        while (lane.inflight > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
        client.release(lane.inflight > 0 ? true : undefined)
      })
    )
  }
}

/** Accounts for a query written to a lane. */
export function laneSent(lane: Lane): void {
  if (lane.inflight++ === 0) lane.progressAt = performance.now()
}

/** Accounts for a query a lane answered (or failed). */
export function laneAnswered(lane: Lane): void {
  lane.inflight--
  lane.progressAt = performance.now()
}
