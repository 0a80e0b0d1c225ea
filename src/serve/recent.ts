import type { TaskResult } from '../pool.js';

/**
 * What `GET /tasks/:id` answers: a task waiting for its (next) attempt, one running, or its
 * final outcome (the object `tidepool run` prints for it).
 */
export type TaskView =
  | { id: string; status: 'queued'; attempts: number }
  | { id: string; status: 'running'; attempt: number; workerId: string; pid: number | null; progress: unknown }
  | TaskResult;

/** A task accepted and not yet final. */
interface Live {
  /** When it was accepted (ms, `performance.now()`). */
  acceptedAt: number;
  /** Attempts made so far (retries included). */
  attempts: number;
  running: { attempt: number; workerId: string; pid: number | null } | null;
}

/**
 * The tasks of one service by id: every task in flight (accepted, not final: bounded by
 * `maxQueued`, which the caller enforces), and the last `maxRecent` final outcomes, oldest
 * forgotten first. Memory stays bounded however many tasks pass: at most
 * `maxQueued + maxRecent` entries, each a task id with its state or outcome.
 */
export class RecentTasks {
  readonly #live = new Map<string, Live>();
  /** Final outcomes in the order they ended (a Map iterates in insertion order). */
  readonly #final = new Map<string, TaskResult>();
  readonly #maxRecent: number;

  constructor(maxRecent: number) {
    this.#maxRecent = maxRecent;
  }

  /** Tasks accepted and not yet final. */
  get inFlight(): number {
    return this.#live.size;
  }

  /** Final outcomes kept. */
  get kept(): number {
    return this.#final.size;
  }

  /** Whether a task with this id is in flight (ids are idempotency keys: a second one is refused). */
  has(id: string): boolean {
    return this.#live.has(id);
  }

  /** A task was accepted. A final outcome kept under the same id is forgotten: the id runs again. */
  accepted(id: string, now = performance.now()): void {
    this.#final.delete(id);
    this.#live.set(id, { acceptedAt: now, attempts: 0, running: null });
  }

  /**
   * An attempt began; for a first attempt, returns how long the task waited since it was
   * accepted (ms), else null.
   */
  started(id: string, attempt: number, workerId: string, pid: number | null, now = performance.now()): number | null {
    const live = this.#live.get(id);
    if (!live) return null;
    live.running = { attempt, workerId, pid };
    live.attempts = Math.max(live.attempts, attempt - 1);
    return attempt === 1 ? now - live.acceptedAt : null;
  }

  /** An attempt ended and the task waits for another (a retry). */
  retrying(id: string, attempt: number): void {
    const live = this.#live.get(id);
    if (!live) return;
    live.running = null;
    live.attempts = attempt;
  }

  /** The task reached its final outcome: kept among the recent ones, the oldest forgotten past `maxRecent`. */
  ended(result: TaskResult): void {
    if (!this.#live.delete(result.id)) return;
    if (this.#maxRecent === 0) return;
    this.#final.set(result.id, result);
    if (this.#final.size > this.#maxRecent) this.#final.delete(this.#final.keys().next().value!);
  }

  /** The task is no longer tracked without an outcome (the service stopped before it ended). */
  dropped(id: string): void {
    this.#live.delete(id);
  }

  /** No task in flight is tracked any more (their deliveries were voided: they come again). */
  droppedAll(): void {
    this.#live.clear();
  }

  /** What is known of a task; `progress` is asked only for a running one. Undefined once forgotten (or never seen). */
  view(id: string, progress: (id: string) => unknown): TaskView | undefined {
    const live = this.#live.get(id);
    if (live) {
      if (live.running === null) return { id, status: 'queued', attempts: live.attempts };
      const { attempt, workerId, pid } = live.running;
      return { id, status: 'running', attempt, workerId, pid, progress: progress(id) ?? null };
    }
    return this.#final.get(id);
  }
}
