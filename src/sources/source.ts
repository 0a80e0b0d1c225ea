/**
 * The source interface: where deliveries come from and where settlements go. The embedded
 * memory queue implements it now; the RabbitMQ source will implement the same contract.
 */
import type { Settlement } from '../settlement.js';

/** A JSON task, as handlers receive it. */
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
}

/** The pool's side of a source. */
export interface SourceConsumer {
  /** A new delivery; the source sends at most `prefetch` that are not yet settled or released. */
  deliver(delivery: Delivery): void;
  /** After `close()`: the source holds nothing more to deliver and nothing is unsettled. */
  drained(): void;
}

export interface Source {
  /** Start delivering to `consumer`, at most `prefetch` unsettled deliveries at a time. */
  open(consumer: SourceConsumer, prefetch: number): Promise<void>;
  /** Stop delivering until `resume()`; unsettled deliveries stay with the pool. */
  pause(): void;
  resume(): void;
  /** Carry out a settlement. Each delivery is settled or released exactly once. */
  settle(delivery: Delivery, settlement: Settlement): void;
  /** Give a delivery back unsettled; it will be delivered again (at-least-once). */
  release(delivery: Delivery): void;
  /** Take no new work; keep delivering what is held, then call `consumer.drained()`. */
  close(): void;
  /** Release every resource (timers, connections); nothing is delivered afterwards. */
  dispose(): void;
}
