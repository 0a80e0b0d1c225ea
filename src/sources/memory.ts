import { TidepoolError } from '../errors.js';
import type { Settlement } from '../settlement.js';
import { Fifo, Slice } from '../slices.js';
import { parseTask } from './parse.js';
import type { Delivery, Source, SourceConsumer, Task } from './source.js';

/** Timers the queue uses for retry delays (XState's `Clock` shape, so tests can share one). */
export interface Clock {
  setTimeout(fn: (...args: unknown[]) => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

const realClock: Clock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as NodeJS.Timeout),
};

/** A task the embedded queue gave up on. */
export interface DeadLetter {
  /** The task, or for a `malformed` payload its id and the payload as received. */
  task: Task | { id: string; payload: unknown };
  /** Attempts made (0 for a malformed payload, which never ran). */
  attempts: number;
  reason: string;
}

export interface MemorySourceOptions {
  /** Timers for retry delays; tests pass a simulated clock. */
  clock?: Clock;
  /**
   * Dead letters kept, newest last; older ones are dropped and counted in
   * `deadLettersDropped`. Default 1000.
   */
  deadLetterLimit?: number;
}

/** Dead letters the embedded queue keeps by default. */
export const DEAD_LETTER_LIMIT = 1000;

/**
 * Deliveries made in one macrotask for bursts (publishes, resume), at most: each costs the
 * pool a machine event, ~50-100 µs here, so a thousand `run()` calls in one tick reach the
 * pool in slices of ~2-3 ms, one slice a turn, instead of in one long tick. What a single
 * event makes deliverable (the place a settlement frees, a retry come due, a raised
 * prefetch) is delivered at once, as before.
 */
export const DELIVERY_SLICE = 32;

/**
 * The embedded queue: in-process, FIFO, with the settlement semantics of the RabbitMQ source
 * (retries after a delay, a bounded dead-letter list, redelivery of released deliveries). A
 * burst of publishes is delivered `DELIVERY_SLICE` per turn of the event loop.
 *
 * @example
 * const source = new MemorySource({ deadLetterLimit: 100 });
 * const pool = createPool({ worker: { module: './handler.js' }, source });
 */
export class MemorySource implements Source {
  /** The newest dead letters, oldest first (at most `deadLetterLimit`). */
  readonly deadLetters: DeadLetter[] = [];
  /** Dead letters dropped from the front of `deadLetters` to keep it bounded. */
  deadLettersDropped = 0;
  readonly #deadLetterLimit: number;
  readonly #ready = new Fifo<Delivery>();
  #unsettled = new Map<string, Delivery>();
  /** Retries in their delay: each timer, and the task and attempt it will deliver. */
  #timers = new Map<unknown, { task: Task; attempt: number }>();
  readonly #clock: Clock;
  #consumer: SourceConsumer | null = null;
  #prefetch = 0;
  #seq = 0;
  #paused = false;
  #closed = false;
  #drained = false;
  #disposed = false;
  readonly #slice = new Slice(DELIVERY_SLICE, () => this.#pump());

  constructor(options: MemorySourceOptions | Clock = {}) {
    // A bare clock is accepted too (the shape tests used first).
    const o: MemorySourceOptions = 'setTimeout' in options ? { clock: options } : options;
    this.#clock = o.clock ?? realClock;
    this.#deadLetterLimit = o.deadLetterLimit ?? DEAD_LETTER_LIMIT;
  }

  /**
   * Queue a payload (a task object, or its JSON as text or bytes) for its first attempt. One
   * that is not a task is dead-lettered at once and reported to the consumer as `malformed`.
   * Throws `TIDEPOOL_ERR_POOL_STATE` once the queue is closed.
   */
  publish(payload: unknown, options: { defaultId: string }): void {
    if (this.#closed) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the queue is closed: the pool is draining or stopped');
    const parsed = parseTask(payload, options.defaultId);
    if (!parsed.ok) {
      this.#deadLetter({ task: { id: parsed.id, payload }, attempts: 0, reason: `malformed: ${parsed.message}` });
      this.#consumer?.malformed({ id: parsed.id, message: parsed.message });
      return;
    }
    this.#ready.push(this.#delivery(parsed.task, 1, parsed.text));
    this.#pump();
  }

  /** Queue a task object for its first attempt (`publish` with the task's own id). */
  submit(task: Task): void {
    this.publish(task, { defaultId: task.id });
  }

  /** Deliveries waiting, in retry delay, and unsettled. */
  get size(): { ready: number; delayed: number; unsettled: number } {
    return { ready: this.#ready.length, delayed: this.#timers.size, unsettled: this.#unsettled.size };
  }

  async open(consumer: SourceConsumer, prefetch: number): Promise<void> {
    this.#consumer = consumer;
    this.#prefetch = prefetch;
    this.#pump();
  }

  prefetch(prefetch: number): void {
    const raised = Math.max(0, prefetch - this.#prefetch);
    this.#prefetch = prefetch;
    this.#pump(raised);
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#pump();
  }

  async settle(delivery: Delivery, settlement: Settlement): Promise<void> {
    if (this.#unsettled.get(delivery.id) !== delivery) return;
    this.#unsettled.delete(delivery.id);
    if (settlement.action === 'retry') {
      const timer = this.#clock.setTimeout(() => {
        this.#timers.delete(timer);
        this.#ready.push(this.#delivery(delivery.task, settlement.attempt, delivery.text));
        this.#pump(1);
      }, settlement.delay);
      this.#timers.set(timer, { task: delivery.task, attempt: settlement.attempt });
    } else if (settlement.action === 'dead-letter') {
      this.#deadLetter({ task: delivery.task, attempts: delivery.attempt, reason: settlement.reason });
    }
    this.#pump(1);
  }

  async release(delivery: Delivery): Promise<void> {
    if (this.#unsettled.get(delivery.id) !== delivery) return;
    this.#unsettled.delete(delivery.id);
    // Interrupted through no fault of its own: same attempt, front of the queue.
    this.#ready.unshift(this.#delivery(delivery.task, delivery.attempt, delivery.text));
    this.#pump(1);
  }

  /**
   * Drop the undelivered task `taskId`, ready or in its retry delay: it is never delivered.
   * Returns whether one was dropped (a delivered task is the pool's to cancel). A linear scan
   * of the waiting tasks: cancels are rare, and the queue keeps no index it would pay for on
   * every task.
   */
  cancel(taskId: string): boolean {
    let dropped = this.#ready.remove((d) => d.task.id === taskId);
    for (const [timer, waiting] of this.#timers) {
      if (waiting.task.id !== taskId) continue;
      this.#clock.clearTimeout(timer);
      this.#timers.delete(timer);
      dropped = true;
    }
    // A closed queue may now hold nothing more.
    if (dropped) this.#pump();
    return dropped;
  }

  /** Tasks waiting to be delivered: ready, and in a retry delay. */
  depth(): number {
    return this.#ready.length + this.#timers.size;
  }

  /**
   * Fault injection, for tests of what a broker does when its connection drops and comes
   * back: every unsettled delivery goes back to the front of the queue (as a broker requeues
   * the unacked messages of a closed channel) and is void; the consumer hears `lost`, then
   * `restored`, then gets them again as new deliveries.
   */
  interrupt(reason = new Error('connection lost (simulated)')): void {
    const held = [...this.#unsettled.values()];
    this.#unsettled.clear();
    for (let i = held.length - 1; i >= 0; i--) this.#ready.unshift(this.#delivery(held[i].task, held[i].attempt, held[i].text));
    this.#consumer?.lost(reason);
    this.#consumer?.restored();
    this.#pump();
  }

  close(): void {
    this.#closed = true;
    this.#pump();
  }

  async dispose(): Promise<void> {
    this.#closed = true;
    this.#disposed = true;
    for (const timer of this.#timers.keys()) this.#clock.clearTimeout(timer);
    this.#timers.clear();
    this.#consumer = null;
  }

  #deadLetter(letter: DeadLetter): void {
    this.deadLetters.push(letter);
    if (this.deadLetters.length > this.#deadLetterLimit) {
      this.deadLetters.shift();
      this.deadLettersDropped++;
    }
  }

  #delivery(task: Task, attempt: number, text: string | undefined): Delivery {
    const id = `d${++this.#seq}`;
    return text === undefined ? { id, task, attempt } : { id, task, attempt, text };
  }

  /**
   * Deliver what prefetch allows: `freed` deliveries at once (what the caller itself made
   * deliverable: a freed place, a retry come due, a raised prefetch), the rest within this
   * macrotask's slice, and what is left over on a later turn.
   */
  #pump(freed = 0): void {
    const consumer = this.#consumer;
    if (!consumer || this.#disposed) return;
    while (!this.#paused && this.#unsettled.size < this.#prefetch && this.#ready.length > 0) {
      if (freed > 0) freed--;
      else if (!this.#slice.take()) break;
      const delivery = this.#ready.shift();
      this.#unsettled.set(delivery.id, delivery);
      consumer.deliver(delivery);
    }
    if (this.#closed && !this.#drained && this.#ready.length === 0 && this.#timers.size === 0 && this.#unsettled.size === 0) {
      this.#drained = true;
      consumer.drained();
    }
  }
}
