import type { AnyActorRef, InspectionEvent, Observer } from 'xstate';
import type { Pool, TaskResult } from '../pool.js';

/**
 * What the dashboard shows, kept live from the pool's inspection stream (the state of the
 * pool machine and of every worker machine) and its events (task, attempt, pid, progress,
 * outcomes). Bounded whatever runs through the pool: one entry per live worker, the few
 * workers reaped in the last moments, the last `RECENT_OUTCOMES` outcomes and counters.
 * Subscribers get a snapshot, then one coalesced update per `TICK_MS` with what changed.
 */

/** Outcomes kept for the page. */
export const RECENT_OUTCOMES = 50;
/** Reaped workers stay this long, in ms, so that the page sees them reach `reaped`. */
export const REAPED_LINGER_MS = 2_000;
/** Reaped workers kept at most (the oldest go first), however fast workers come and go. */
export const REAPED_KEPT = 100;
/** Between two updates to subscribers, in ms. */
export const TICK_MS = 100;

/** One worker as the page shows it. */
export interface WorkerView {
  id: string;
  /** Its machine's state (`running`, `terminating.signalled`, `reaped`). */
  state: string;
  pid: number | null;
  taskId: string | null;
  attempt: number | null;
  progress: unknown;
  /** When it was spawned, epoch ms. */
  since: number;
}

/** A final outcome as the page lists it. */
export interface OutcomeView {
  id: string;
  status: TaskResult['status'];
  kind?: string;
  message?: string;
  attempts: number;
  durationMs: number;
  /** Epoch ms. */
  at: number;
}

/** The pool as the page shows it (what `/readyz` says, and counters since start). */
export interface PoolView {
  /** The pool machine's state. */
  state: string;
  pausedBy: string | null;
  queued: number;
  inFlight: number;
  containment: string | null;
  breaker: unknown;
  /** Final outcomes since start: `resolved`, and failures by kind. */
  outcomes: Record<string, number>;
  spawned: number;
  reaped: number;
}

export interface LiveSnapshot {
  type: 'snapshot';
  pool: PoolView;
  workers: WorkerView[];
  recent: OutcomeView[];
}

export interface LiveUpdate {
  type: 'update';
  pool: PoolView;
  /** Workers that changed since the last update. */
  workers: WorkerView[];
  /** Workers gone from the page since the last update (reaped a while ago). */
  gone: string[];
  /** Outcomes since the last update, oldest first. */
  outcomes: OutcomeView[];
}

export type LiveMessage = LiveSnapshot | LiveUpdate;

type Listener = (message: LiveMessage) => void;

const stateText = (value: unknown): string => {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    const [key, inner] = Object.entries(value as Record<string, unknown>)[0] ?? [];
    return key === undefined ? '' : `${key}.${stateText(inner)}`;
  }
  return String(value);
};

/** The live view of one pool; `observer` goes into the pool's `inspect`. */
export class LiveView {
  readonly #workers = new Map<string, WorkerView>();
  /** Reaped workers in the order they were reaped, with when. */
  readonly #reaped = new Map<string, number>();
  readonly #recent: OutcomeView[] = [];
  readonly #outcomes: Record<string, number> = {};
  readonly #listeners = new Set<Listener>();
  #pool: Pool | null = null;
  #spawned = 0;
  #reapedCount = 0;
  // Changes since the last update.
  readonly #changed = new Set<string>();
  #gone: string[] = [];
  #fresh: OutcomeView[] = [];
  #timer: NodeJS.Timeout | null = null;

  /** The inspection observer: pool and worker machine states. */
  readonly observer: Observer<InspectionEvent> = {
    next: (event) => {
      // Every actor's first snapshot comes at its start (the `xstate.init` event).
      if (event.type !== '@xstate.snapshot') return;
      const ref = event.actorRef as AnyActorRef & { id: string; logic?: { id?: string } };
      const machine = (ref.logic as { id?: string } | undefined)?.id;
      const snapshot = event.snapshot as { value?: unknown; status?: string };
      if (machine === 'pool') {
        // Its state is read from the pool when the update goes out (`pool.state`).
        this.#touch();
      } else if (machine === 'worker') {
        const worker = this.#workers.get(ref.id);
        const state = snapshot.status === 'done' ? 'reaped' : stateText(snapshot.value);
        if (!worker) {
          if (this.#reaped.has(ref.id)) return;
          this.#workers.set(ref.id, { id: ref.id, state, pid: null, taskId: null, attempt: null, progress: undefined, since: Date.now() });
          this.#spawned++;
        } else if (worker.state === state) {
          return;
        } else {
          worker.state = state;
          // A worker back to `ready` (reused) has no task any more.
          if (state === 'ready') Object.assign(worker, { taskId: null, attempt: null, progress: undefined });
        }
        if (state === 'reaped') this.#reap(ref.id);
        this.#changed.add(ref.id);
        this.#touch();
      }
    },
  };

  /** Follow `pool`'s events (call before `start()`). */
  attach(pool: Pool): void {
    this.#pool = pool;
    pool.on('worker:spawned', ({ workerId, pid }) => this.#patch(workerId, { pid }));
    pool.on('attempt:start', ({ workerId, taskId, attempt, pid }) => this.#patch(workerId, { taskId, attempt, progress: undefined, ...(pid === null ? {} : { pid }) }));
    pool.on('progress', ({ workerId, value }) => this.#patch(workerId, { progress: value }));
    pool.on('outcome', (result) => {
      const view: OutcomeView = { id: result.id, status: result.status, attempts: result.attempts, durationMs: result.durationMs, at: Date.now() };
      if (result.status === 'failed') {
        view.kind = result.error.kind;
        view.message = result.error.message;
      }
      const key = result.status === 'resolved' ? 'resolved' : result.error.kind;
      this.#outcomes[key] = (this.#outcomes[key] ?? 0) + 1;
      this.#recent.push(view);
      if (this.#recent.length > RECENT_OUTCOMES) this.#recent.shift();
      this.#fresh.push(view);
      if (this.#fresh.length > RECENT_OUTCOMES) this.#fresh.shift();
      this.#touch();
    });
  }

  /** What a new page starts from. */
  snapshot(): LiveSnapshot {
    this.#prune(Date.now());
    return { type: 'snapshot', pool: this.#poolView(), workers: [...this.#workers.values()], recent: [...this.#recent] };
  }

  /** Get updates from now on; returns the unsubscribe. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Live worker entries held (bounded by the live workers and `REAPED_KEPT`). */
  get size(): number {
    return this.#workers.size;
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#listeners.clear();
  }

  #patch(workerId: string, patch: Partial<WorkerView>): void {
    const worker = this.#workers.get(workerId);
    if (!worker) return;
    Object.assign(worker, patch);
    this.#changed.add(workerId);
    this.#touch();
  }

  #reap(workerId: string): void {
    this.#reapedCount++;
    this.#reaped.set(workerId, Date.now());
    while (this.#reaped.size > REAPED_KEPT) this.#forget(this.#reaped.keys().next().value!);
  }

  #forget(workerId: string): void {
    this.#reaped.delete(workerId);
    this.#workers.delete(workerId);
    this.#changed.delete(workerId);
    // Only subscribers need to hear of it; a new one starts from a snapshot.
    if (this.#listeners.size > 0) this.#gone.push(workerId);
  }

  /** Reaped workers shown long enough leave. */
  #prune(now: number): void {
    for (const [id, at] of this.#reaped) {
      if (now - at < REAPED_LINGER_MS) break;
      this.#forget(id);
    }
  }

  #poolView(): PoolView {
    const pool = this.#pool;
    return {
      state: pool?.state ?? 'starting',
      pausedBy: pool?.pausedBy ?? null,
      queued: pool?.queued ?? 0,
      inFlight: pool?.inFlight ?? 0,
      containment: pool?.containment ?? null,
      breaker: pool?.breaker ?? null,
      outcomes: { ...this.#outcomes },
      spawned: this.#spawned,
      reaped: this.#reapedCount,
    };
  }

  /** Something changed: an update goes out on the next tick (one per `TICK_MS` at most). */
  #touch(): void {
    if (this.#timer || this.#listeners.size === 0) return;
    this.#timer = setTimeout(() => this.#flush(), TICK_MS);
    this.#timer.unref();
  }

  #flush(): void {
    this.#timer = null;
    this.#prune(Date.now());
    const update: LiveUpdate = {
      type: 'update',
      pool: this.#poolView(),
      workers: [...this.#changed].map((id) => this.#workers.get(id)!).filter(Boolean),
      gone: this.#gone,
      outcomes: this.#fresh,
    };
    this.#changed.clear();
    this.#gone = [];
    this.#fresh = [];
    for (const listener of this.#listeners) listener(update);
    // Reaped workers still lingering leave on a later tick.
    if (this.#reaped.size > 0) this.#touch();
  }
}
