/**
 * Queues for the manager's bursts (a thousand `run()` calls in one tick, a pipe read holding
 * hundreds of the spawn host's frames): past a budget, the rest waits for a later turn of the
 * event loop (`setImmediate`), so timers and I/O are served in between and the event-loop
 * delay stays bounded. Measured in docs/benchmark-notes.md ("Event-loop delay under bursts").
 */

/**
 * A budget of items per macrotask. `take()` grants up to `limit` items in the current
 * macrotask; past that it refuses, and `resume` runs on a later turn, once, with a fresh
 * budget. The budget is counted from the first item taken in a macrotask (a `setImmediate`
 * scheduled then renews it), so a caller that takes a few items now and then never waits.
 *
 * @example
 * const slice = new Slice(64, () => pump());
 * function pump() {
 *   while (queue.length > 0 && slice.take()) handle(queue.shift());
 * }
 */
export class Slice {
  readonly #limit: number;
  readonly #resume: () => void;
  #used = 0;
  #renewing = false;
  #waiting = false;

  /** `limit`: items per macrotask, at least 1 (a RangeError otherwise). */
  constructor(limit: number, resume: () => void) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`a slice's limit must be a positive integer, got ${limit}`);
    this.#limit = limit;
    this.#resume = resume;
  }

  /** Whether one more item may be handled now; when not, `resume` runs on a later turn. */
  take(): boolean {
    if (!this.#renewing) {
      this.#renewing = true;
      setImmediate(this.#renew);
    }
    if (this.#used >= this.#limit) {
      this.#waiting = true;
      return false;
    }
    this.#used++;
    return true;
  }

  readonly #renew = (): void => {
    this.#renewing = false;
    this.#used = 0;
    if (!this.#waiting) return;
    this.#waiting = false;
    this.#resume();
  };
}

/**
 * A FIFO whose shift is O(1) at any length (a large array's shift moves every element), with
 * an unshift for the rare item put back at the front.
 */
export class Fifo<T> {
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

  /** Remove every item that `match`es; true when any was (a linear scan, for rare uses). */
  remove(match: (item: T) => boolean): boolean {
    const kept = this.#items.slice(this.#head).filter((item) => !match(item));
    if (kept.length === this.length) return false;
    this.#items = kept;
    this.#head = 0;
    return true;
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
