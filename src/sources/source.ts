/**
 * The source interface: where deliveries come from and where settlements go. The pool is
 * given a source and knows nothing of its implementation: the embedded memory queue, or a
 * broker. Every source meets the contract in `test/helpers/source-contract.ts`.
 */
import type { TaskResult } from '../pool.js';
import type { Settlement } from '../settlement.js';

/** A JSON task, as handlers receive it. `id` is the idempotency key everywhere. */
export interface Task {
  id: string;
  [key: string]: unknown;
}

/** One attempt to hand a task to the pool. */
export interface Delivery {
  /** Unique per delivery, never reused. */
  readonly id: string;
  readonly task: Task;
  /** 1-based. */
  readonly attempt: number;
  /** The task's JSON as it arrived, when it came as text: command workers get these bytes. */
  readonly text?: string;
}

/** A payload the source dead-lettered because it is not a task (kind `malformed`). */
export interface Malformed {
  /** The payload's own id when it had a usable one, else the one the source assigned. */
  id: string;
  /** What is wrong with it ("not JSON: ...", "a task must be a JSON object, got an array"). */
  message: string;
}

/** The pool's side of a source. */
export interface SourceConsumer {
  /** A new delivery; the source holds at most `prefetch` unsettled and unreleased. */
  deliver(delivery: Delivery): void;
  /** A payload that is not a task: already dead-lettered by the source; no worker sees it. */
  malformed(rejected: Malformed): void;
  /** After `close()`: the source holds nothing more to deliver and nothing is unsettled. */
  drained(): void;
  /**
   * The connection to the broker was lost. Every delivery made before is void: the broker
   * gives it back to the queue, so the pool must neither settle nor release it (attempts
   * already running may finish; their outcomes are dropped: at-least-once).
   */
  lost(reason: Error): void;
  /** The connection is back; deliveries resume (void ones come again as new deliveries). */
  restored(): void;
}

export interface Source {
  /**
   * The longest a delivery may stay unsettled before the source's broker takes it back (ms;
   * RabbitMQ's consumer timeout), if there is such a limit: the pool refuses to start when an
   * attempt could outlast it.
   */
  readonly deliveryTimeout?: number;
  /** Start delivering to `consumer`, at most `prefetch` unsettled deliveries at a time. */
  open(consumer: SourceConsumer, prefetch: number): Promise<void>;
  /**
   * Follow the pool's free capacity: from now on hold at most `prefetch` unsettled
   * deliveries. The pool lowers it while workers are on their way out, so that it never
   * holds a delivery it cannot start.
   */
  prefetch(prefetch: number): void;
  /** Stop delivering until `resume()`; unsettled deliveries stay with the pool. */
  pause(): void;
  resume(): void;
  /**
   * Carry out a settlement; resolves once it is safe (acked, requeued with its delay,
   * dead-lettered). Each delivery is settled or released at most once; a second call, or a
   * call for a delivery voided by a lost connection, does nothing. `result` is the task's
   * final result (for `ack` and `dead-letter`), for a source that answers the task's sender
   * (RabbitMQ's `replyTo`); it rejects when the settlement could not be made safe (the
   * delivery then comes again).
   */
  settle(delivery: Delivery, settlement: Settlement, result?: TaskResult): Promise<void>;
  /** Give a delivery back unsettled; it will be delivered again (at-least-once). */
  release(delivery: Delivery): Promise<void>;
  /**
   * Take a task from this process (`pool.run`): the payload goes through the shared parser
   * (`parseTask`); one that is not a task is dead-lettered and reported as `malformed`.
   * Optional: a source that only consumes (a broker queue fed by others) has none.
   * Throws `TIDEPOOL_ERR_POOL_STATE` once closed.
   */
  publish?(payload: unknown, options: { defaultId: string }): void;
  /**
   * Drop a task that has not been delivered yet (waiting its turn, or in a retry delay), so
   * that it never runs (`pool.cancel`). True when one was dropped; false when the source holds
   * no undelivered task of that id (it was delivered, is final, or was never seen). Nothing
   * is dead-lettered: a cancel is the user's decision. Optional: a broker's queue cannot take
   * a message out of the middle; for such a source the pool remembers the cancelled id and
   * acks its delivery at once when it comes.
   */
  cancel?(taskId: string): boolean;
  /**
   * Tasks waiting in the source and not delivered: ready, or in a retry delay (`pool.queued`
   * adds the pool's own backlog). Optional: a source that cannot count cheaply has none.
   */
  depth?(): number;
  /** Take no new work; keep delivering what is held, then call `consumer.drained()`. */
  close(): void;
  /** Release every resource (timers, connections); nothing is delivered afterwards. */
  dispose(): Promise<void>;
}
