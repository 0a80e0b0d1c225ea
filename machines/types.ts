/**
 * Vocabulary shared by the machines, the process driver and the sources.
 * Pure types: nothing here may import anything but other types.
 */

/**
 * Why an attempt failed. `malformed` is decided before any worker is involved; `cancelled` is
 * the user's decision (`pool.cancel`), not a fault: never retried, settled as an ack.
 */
export type FailureKind = 'error' | 'timeout' | 'crash' | 'memory' | 'spawn' | 'malformed' | 'cancelled';

/** Failure kinds that count toward the crash breaker: the process itself could not do its job. */
export const CRASH_KINDS: readonly FailureKind[] = ['crash', 'memory', 'spawn'];

/**
 * An error as it crosses a process boundary: plain JSON. Besides these, the error's own
 * enumerable fields that JSON can carry (`status: 503`), bounded in size.
 */
export interface ErrorInfo {
  name?: string;
  message: string;
  code?: string;
  stack?: string;
  /** The error's `cause`, serialised the same way (a bounded chain). */
  cause?: ErrorInfo;
  [field: string]: unknown;
}

/** How one attempt ended: exactly one per attempt. */
export type Outcome =
  | { status: 'resolved'; result: unknown }
  | {
      status: 'failed';
      kind: FailureKind;
      message: string;
      /** false when the handler said "do not retry" or the kind is never retried. */
      retryable: boolean;
      error?: ErrorInfo;
      exitCode?: number | null;
      signal?: string | null;
    };

export type FailedOutcome = Extract<Outcome, { status: 'failed' }>;

/** How a worker's process ended. */
export interface ProcessExit {
  code: number | null;
  signal: string | null;
  /** The driver saw the process exceed its memory cap (watchdog or V8 heap limit). */
  memory?: boolean;
  /** The tail of the process's stderr, for the failure message. */
  detail?: string;
}

/** The output of a reaped worker machine. */
export interface WorkerReport {
  workerId: string;
  pid: number | null;
  exitCode: number | null;
  signal: string | null;
  /** How many tasks the worker served. */
  served: number;
  /** The status or failure kind of its last attempt, if it ran one. */
  last: Outcome['status'] | FailureKind | null;
}

/**
 * Kinds never retried whatever the worker says: the task itself is at fault (`malformed`), or
 * the user ended it (`cancelled`).
 */
export const FINAL_KINDS: readonly FailureKind[] = ['malformed', 'cancelled'];

/**
 * The one retry rule: a failure is retried unless its kind is never retried, or the worker
 * marked it final (a `NonRetryableError`, a command's exit code 65, output past the cap).
 * Whether the attempts are exhausted is the settlement's business (`decideSettlement`).
 */
export const isRetryable = (kind: FailureKind, markedFinal = false): boolean => !markedFinal && !FINAL_KINDS.includes(kind);

/** Whether an outcome counts toward the crash breaker. */
export const isCrash = (outcome: Outcome): boolean => outcome.status === 'failed' && CRASH_KINDS.includes(outcome.kind);
