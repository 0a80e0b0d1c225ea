export { workerMachine, exitOutcome } from './worker.js';
export type {
  ProcessCommand,
  ProcessEvent,
  ProcessInput,
  WorkerCommand,
  WorkerContext,
  WorkerEvent,
  WorkerInput,
  WorkerPhase,
  WorkerToPoolEvent,
} from './worker.js';
export { poolMachine } from './pool.js';
export type {
  Assignment,
  ForgetParams,
  PhaseCounts,
  PoolActor,
  PoolContext,
  PoolEmitted,
  PoolEvent,
  PoolInput,
  PoolOutput,
  ReleaseParams,
  SettleParams,
  SpawnParams,
  TellParams,
  WorkerEndEvent,
} from './pool.js';
export { DELAY_DEFAULTS } from './defaults.js';
export { CRASH_KINDS, isCrash, isRetryable } from './types.js';
export type { ErrorInfo, FailedOutcome, FailureKind, Outcome, ProcessExit, WorkerReport } from './types.js';
