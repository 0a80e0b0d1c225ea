/**
 * The default of every named delay, in ms: the machines' own values, and the defaults of the
 * pool options of the same meaning (`src/options.ts` builds `DEFAULTS` from these), so each is
 * stated once.
 */
export const DELAY_DEFAULTS = {
  /** A worker that has not become ready by then fails with kind `spawn`. */
  spawnTimeout: 10_000,
  /** An attempt's hard deadline (15 min: below RabbitMQ's default 30 min consumer timeout). */
  taskTimeout: 900_000,
  /** Between SIGTERM and SIGKILL. */
  killGrace: 5_000,
  /** A reused worker idle this long retires. */
  idleTimeout: 60_000,
  /** The crash breaker's sliding window. */
  crashWindow: 60_000,
  /**
   * How long intake stays paused the first time the breaker trips; each probe that crashes
   * doubles it, up to `breakerMaxCooldown`.
   */
  breakerCooldown: 5_000,
  /** The ceiling of the breaker's growing cooldown (5 min). */
  breakerMaxCooldown: 300_000,
} as const;
