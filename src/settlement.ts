import type { FailureKind, Outcome } from '../machines/types.js';

/**
 * What a source does with a delivery after its outcome: `ack`; `retry` after `delay` ms as
 * attempt `attempt`; or `dead-letter`, carrying why (a broker puts these in headers).
 */
export type Settlement =
  | { action: 'ack' }
  | { action: 'retry'; delay: number; attempt: number }
  | { action: 'dead-letter'; reason: string; kind: FailureKind; message: string };

export interface RetryPolicy {
  /** Attempts per task, the first included. */
  attempts: number;
  /** Base delay, doubled per attempt. */
  retryDelay: number;
  /** Ceiling of the delay before jitter. */
  retryMaxDelay: number;
}

/**
 * Exponential backoff with "equal jitter": half the delay is fixed, half random, so retries of
 * tasks that failed together spread out but never fire at once.
 */
export function backoff(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.retryMaxDelay, policy.retryDelay * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * The one settlement policy every source executes: which outcome is acked (resolved, or
 * `cancelled`), retried or dead-lettered.
 */
export function decideSettlement(
  outcome: Outcome,
  attempt: number,
  policy: RetryPolicy,
  random?: () => number,
): Settlement {
  if (outcome.status === 'resolved') return { action: 'ack' };
  const { kind, message } = outcome;
  // A cancel is the user's decision, not a fault: the delivery is removed, not dead-lettered
  // (Celery's `revoke`, BullMQ's job cancel).
  if (kind === 'cancelled') return { action: 'ack' };
  if (!outcome.retryable) return { action: 'dead-letter', reason: `${kind} (not retryable)`, kind, message };
  if (attempt >= policy.attempts) return { action: 'dead-letter', reason: `${kind} (attempts exhausted)`, kind, message };
  return { action: 'retry', delay: backoff(policy, attempt, random), attempt: attempt + 1 };
}
