export { workerMachine, exitOutcome } from './worker.js';
export type {
  ProcessCommand,
  ProcessEvent,
  ProcessInput,
  WorkerCommand,
  WorkerContext,
  WorkerEvent,
  WorkerInput,
  WorkerToPoolEvent,
} from './worker.js';
export { poolMachine } from './pool.js';
export type {
  BreakerParams,
  PoolActor,
  PoolContext,
  PoolEvent,
  PoolInput,
  PoolOutput,
  ReapedParams,
  ReleaseParams,
  SettleParams,
  WorkerSlot,
} from './pool.js';
export { CRASH_KINDS, isCrash } from './types.js';
export type { ErrorInfo, FailedOutcome, FailureKind, Outcome, ProcessExit, WorkerReport } from './types.js';
