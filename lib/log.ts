/** What lib modules log through: the part of pino's interface they use, which Fastify's logger has. */
export interface Log {
  info(obj: object | string, msg?: string): void
  warn(obj: object | string, msg?: string): void
}
