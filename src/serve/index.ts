/**
 * `tidepool-runtime/serve`: the service behind `tidepool serve`, for a program that runs it
 * itself (its own signals, its own listen). A separate entry point: fastify and prom-client are
 * loaded only by those who import it, never by `tidepool-runtime` alone.
 */
export { buildApp, bearerMatches } from './app.js';
export { createService } from './create.js';
export type { ServiceParts } from './create.js';
export { ServiceMetrics, outcomeLabel } from './metrics.js';
export type { MetricsSource } from './metrics.js';
export { isLoopback, resolveServeOptions, SERVE_DEFAULTS } from './options.js';
export type { ResolvedServeOptions, ServeOptions } from './options.js';
export { RecentTasks } from './recent.js';
export type { TaskView } from './recent.js';
export { Service } from './service.js';
export type { DrainReport, Health, Readiness, Settled } from './service.js';
