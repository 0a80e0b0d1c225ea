import { TidepoolError } from '../errors.js';
import type { Settlement } from '../settlement.js';
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

export interface DeadLetter {
  task: Task;
  attempts: number;
  reason: string;
}

/**
 * The embedded queue: in-process, FIFO, with the settlement semantics of the RabbitMQ source
 * (retries after a delay, a dead-letter list, redelivery of released deliveries).
 */
export class MemorySource implements Source {
  readonly deadLetters: DeadLetter[] = [];
  readonly #ready = new Fifo<Delivery>();
  #unsettled = new Set<string>();
  #timers = new Set<unknown>();
  readonly #clock: Clock;
  #consumer: SourceConsumer | null = null;
  #prefetch = 0;
  #seq = 0;
  #paused = false;
  #closed = false;
  #drained = false;
  #disposed = false;

  constructor(clock: Clock = realClock) {
    this.#clock = clock;
  }

  /** Queue a task for its first attempt. */
  submit(task: Task): void {
    if (this.#closed) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the queue is closed: the pool is draining or stopped');
    this.#ready.push(this.#delivery(task, 1));
    this.#pump();
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

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#pump();
  }

  settle(delivery: Delivery, settlement: Settlement): void {
    if (!this.#unsettled.delete(delivery.id)) return;
    if (settlement.action === 'retry') {
      const timer = this.#clock.setTimeout(() => {
        this.#timers.delete(timer);
        this.#ready.push(this.#delivery(delivery.task, settlement.attempt));
        this.#pump();
      }, settlement.delay);
      this.#timers.add(timer);
    } else if (settlement.action === 'dead-letter') {
      this.deadLetters.push({ task: delivery.task, attempts: delivery.attempt, reason: settlement.reason });
    }
    this.#pump();
  }

  release(delivery: Delivery): void {
    if (!this.#unsettled.delete(delivery.id)) return;
    // Interrupted through no fault of its own: same attempt, front of the queue.
    this.#ready.unshift(this.#delivery(delivery.task, delivery.attempt));
    this.#pump();
  }

  close(): void {
    this.#closed = true;
    this.#pump();
  }

  dispose(): void {
    this.#closed = true;
    this.#disposed = true;
    for (const timer of this.#timers) this.#clock.clearTimeout(timer);
    this.#timers.clear();
    this.#consumer = null;
  }

  #delivery(task: Task, attempt: number): Delivery {
    return { id: `d${++this.#seq}`, task, attempt };
  }

  #pump(): void {
    const consumer = this.#consumer;
    if (!consumer || this.#disposed) return;
    while (!this.#paused && this.#unsettled.size < this.#prefetch && this.#ready.length > 0) {
      const delivery = this.#ready.shift();
      this.#unsettled.add(delivery.id);
      consumer.deliver(delivery);
    }
    if (this.#closed && !this.#drained && this.#ready.length === 0 && this.#timers.size === 0 && this.#unsettled.size === 0) {
      this.#drained = true;
      consumer.drained();
    }
  }
}

/**
 * A FIFO whose shift is O(1) at any length (a large array's shift moves every element), with
 * an unshift for the rare delivery put back at the front.
 */
class Fifo<T> {
  #items: T[] = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    this.#items.push(item);
  }

  unshift(item: T): void {
    if (this.#head > 0) this.#items[--this.#head] = item;
    else this.#items.unshift(item);
  }

  /** The first item; only call when `length > 0`. */
  shift(): T {
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined as T;
    // Drop the consumed prefix once it is most of the array.
    if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
}
