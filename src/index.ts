export { createPool } from './create-pool.js';
export { Pool } from './pool.js';
export type {
  AttemptEvent,
  AttemptStart,
  BreakerStatus,
  BreakerTripped,
  CancelAnswer,
  DrainOptions,
  PoolEvents,
  PoolInternals,
  PoolState,
  ProgressEvent,
  PublicError,
  TaskResult,
  WorkerCounts,
} from './pool.js';
export { MAX_ID_LENGTH, parseTask, taskIdOf } from './sources/parse.js';
export type { Parsed } from './sources/parse.js';
export { DEFAULTS, resolveOptions } from './options.js';
export type { PoolOptions, ResolvedOptions, WorkerSpec } from './options.js';
export { ConfigError, ERROR_CODES, OptionError, TidepoolError, UsageError } from './errors.js';
export { LOG_REDACT, redactUrl } from './logging.js';
export type { ErrorCode } from './errors.js';
export { NonRetryableError } from './child/api.js';
export type { Handler, HandlerContext } from './child/api.js';
export { backoff, decideSettlement } from './settlement.js';
export type { RetryPolicy, Settlement } from './settlement.js';
export { DEAD_LETTER_LIMIT, MemorySource } from './sources/memory.js';
export type { Clock, DeadLetter, MemorySourceOptions } from './sources/memory.js';
export type { Delivery, Malformed, Source, SourceConsumer, Task } from './sources/source.js';
export { AmqpSource, createAmqpSource, DEFAULT_CONSUMER_TIMEOUT, HEADERS } from './sources/amqp.js';
export type { AmqpSourceOptions } from './sources/amqp.js';
export { DEFAULT_DELIVERY_LIMIT, tierFor, topologyNames } from './sources/amqp/topology.js';
export type { QueueType } from './sources/amqp/topology.js';
export { EXIT_NON_RETRYABLE, MAX_OUTPUT } from './process/driver.js';
export { MAX_PROGRESS, PROGRESS_PREFIX } from './child/protocol.js';
export type { FailureKind, Outcome, WorkerReport } from '../machines/types.js';
export type { BreakerState } from '../machines/pool.js';
