import { assign, emit, enqueueActions, fromPromise, setup } from 'xstate';
import type { ActorRefFrom } from 'xstate';
import { DELAY_DEFAULTS } from './defaults.js';
import { isCrash } from './types.js';
import type { FailedOutcome, Outcome, WorkerReport } from './types.js';
import type { WorkerCommand, WorkerInput, WorkerPhase, WorkerToPoolEvent } from './worker.js';

/**
 * The pool machine: starting → running ⇄ paused → draining → stopped.
 *
 * It owns the worker machines (started on demand through `spawnWorker`, reaped on `worker.done`), a
 * backlog of delivery ids bounded by the source's prefetch, and the crash breaker. Deliveries,
 * settlements and intake control are named slots filled by `src/`.
 *
 * The crash breaker (Erlang/OTP's restart intensity, PHP-FPM's `emergency_restart_threshold`,
 * with a circuit breaker's half-open probe): `closed` while crashes stay within `maxCrashes`
 * per `crashWindow`; the crash past that trips it `open` (state `paused`, intake paused) for
 * the cooldown; then `half-open` (state `running`): exactly one attempt, the probe, is let
 * through. A probe that crashes re-opens it with the cooldown doubled (up to
 * `breakerMaxCooldown`); one that does not closes it. The cooldown returns to
 * `breakerCooldown` once `crashWindow` has passed closed without a trip.
 */

export interface PoolInput {
  /** Most live workers (processes) at once. */
  maxWorkers: number;
  /** Warm single-use workers kept ready while running. */
  spares: number;
  /** Tasks a worker serves before it retires. */
  maxTasksPerWorker: number;
  /** The breaker trips on the crash after this many within `crashWindow`. */
  maxCrashes: number;
  /**
   * Most workers starting at once (spawned, not yet ready or running): a burst of work is
   * started in waves the host can start within `spawnTimeout` (PHP-FPM's `pm.max_spawn_rate`).
   */
  maxSpawning: number;
  /** The breaker's first cooldown, in ms (default `DELAY_DEFAULTS.breakerCooldown`). */
  breakerCooldown?: number;
  /** The ceiling of its growing cooldown, in ms (default `DELAY_DEFAULTS.breakerMaxCooldown`). */
  breakerMaxCooldown?: number;
}

/** Where the crash breaker stands (see the machine's comment). */
export type BreakerState = 'closed' | 'open' | 'half-open';

/** Live workers per phase, as they reported it (see `WorkerPhase`). */
export type PhaseCounts = Record<WorkerPhase, number>;

/** A delivery handed to an idle worker that has not yet said it took it. */
export interface Assignment {
  workerId: string;
  deliveryId: string;
}

/**
 * The pool's context holds ids and counts, never a record per worker: its cost per event and
 * the size of each inspection snapshot do not grow with the number of live workers. What a
 * worker is doing is what its own machine reports (`worker.*` events, each naming the phase
 * it leaves); the only per-worker ids kept are the idle ones, which dispatch needs.
 */
export interface PoolContext extends Required<PoolInput> {
  /** Monotonic: child ids must be unique or XState orphans the earlier child. */
  seq: number;
  /** Live worker machines (spawned, not yet reaped). */
  live: number;
  /** Live workers per reported phase; they add up to `live`. */
  phases: PhaseCounts;
  /** Idle workers that reported `ready`, oldest first: assignable now. */
  ready: string[];
  /** Spares still spawning, with nothing assigned: assignable, they take it once started. */
  warming: string[];
  /**
   * Deliveries assigned to idle workers and not yet acknowledged (`worker.running`) or
   * answered (`worker.outcome`). A worker that ends before it saw its assignment gives the
   * delivery back through this list: nothing is lost in the race between an assignment and a
   * worker's exit. Short: an assignment is acknowledged as soon as the worker takes it.
   */
  assigned: Assignment[];
  /** Delivery ids received and not yet handed to a worker, oldest first. */
  backlog: string[];
  /** Crashes within the sliding window. */
  crashes: number;
  breaker: BreakerState;
  /** Times the breaker tripped (closed or half-open → open) since the start. */
  trips: number;
  /** The cooldown in force while open, else the one the next trip will use, in ms. */
  cooldown: number;
  /** Half-open: the delivery let through as the probe, once dispatched. */
  probe: string | null;
  pausedBy: 'user' | 'breaker' | null;
  /** The source has closed intake and holds nothing more to deliver. */
  sourceDrained: boolean;
  /** A drain asked for while starting, carried out once started. */
  drainRequested: boolean;
  /** Why the startup failed, if it did. */
  startError: unknown;
}

export type PoolEvent =
  | { type: 'delivery'; deliveryId: string }
  | { type: 'pause' }
  | { type: 'resume' }
  | { type: 'drain' }
  | { type: 'stop' }
  | { type: 'source.drained' }
  /** The source lost its connection: what it delivered before is void (never run, never settled). */
  | { type: 'source.lost' }
  | { type: 'crash.expired' }
  /** `crashWindow` passed closed without a trip: the cooldown returns to `breakerCooldown`. */
  | { type: 'breaker.quiet' }
  /**
   * Cancel a delivery (`pool.cancel`): in the backlog, it is settled `cancelled` at once and
   * never runs; held by `workerId`, that worker is told to end its attempt (`task.cancel`).
   */
  | { type: 'task.cancel'; deliveryId: string; workerId: string | null }
  | WorkerToPoolEvent
  | WorkerEndEvent;

/**
 * A worker machine ended: `worker.done` when it reached `reaped` (its report), `worker.error`
 * when its machine failed (its process slot threw). Either way with what it last knew: the
 * phase it last reported, and the delivery it held without reporting on it, if any.
 */
export type WorkerEndEvent =
  | { type: 'worker.done'; workerId: string; report: WorkerReport; phase: WorkerPhase; held: string | null }
  | { type: 'worker.error'; workerId: string; error: unknown; phase: WorkerPhase; held: string | null };

/** Notifications for the outside world (`actor.on(type, ...)`), sent after the transition. */
export type PoolEmitted =
  | { type: 'worker.reaped'; report: WorkerReport }
  /** The breaker opened: `cooldownMs` until it lets a probe through; `trips` in total. */
  | { type: 'breaker.tripped'; crashes: number; trips: number; cooldownMs: number }
  /** The cooldown passed (or `resume` cut it short): the next attempt is the probe. */
  | { type: 'breaker.half-open' }
  /** The probe did not crash (or a drain overrode the breaker). */
  | { type: 'breaker.closed' }
  /**
   * The prefetch the source should keep: `maxWorkers` less the workers on their way out. With
   * at most that many deliveries unsettled, the pool never holds one it cannot start.
   */
  | { type: 'prefetch'; prefetch: number }
  /** A spare exited by itself, cleanly, before any task: the pool keeps no spares from now on. */
  | { type: 'spares.unkept'; workerId: string };

export interface PoolOutput {
  /** Set when the pool could not start. */
  error?: unknown;
}

const WORKER_PREFIX = 'worker.';

type WorkerEventOf<T extends PoolEvent['type']> = Extract<PoolEvent, { type: T }>;

/*
 * Params of the slots. The slots declare `unknown` params because XState's inference of
 * `enqueueActions` breaks when any action in the same setup() has typed params; these
 * interfaces are the contract the implementations in src/ cast to.
 */
export interface SettleParams {
  deliveryId: string;
  outcome: Outcome;
}
export interface ReleaseParams {
  /** The deliveries to give back; `all`: every delivery the pool holds and has not settled. */
  deliveryIds: string[] | 'all';
}
/** A worker machine to start, as its own actor (see `spawnWorker`). */
export type SpawnParams = WorkerInput;
/** A command for a live worker. */
export interface TellParams {
  workerId: string;
  command: WorkerCommand;
}

/** Deliveries to drop at once; every other delivery held is kept running but never settled. */
export interface ForgetParams {
  deliveryIds: string[];
}

const NO_PHASES: PhaseCounts = { spawning: 0, ready: 0, running: 0, leaving: 0 };

/** The report of a reaped worker (a machine that failed has none: an empty one). */
const reportOf = (event: PoolEvent): WorkerReport => {
  const end = event as WorkerEndEvent;
  return end.type === 'worker.done'
    ? end.report
    : { workerId: end.workerId, pid: null, exitCode: null, signal: null, served: 0, last: null };
};

const lateParams = ({ event }: { event: PoolEvent }): ReleaseParams => ({
  deliveryIds: [(event as WorkerEventOf<'delivery'>).deliveryId],
});

/** The phase a report moves its worker to. */
const PHASE_AFTER: Record<Exclude<WorkerToPoolEvent['type'], 'worker.outcome'>, WorkerPhase | null> = {
  'worker.ready': 'ready',
  'worker.running': 'running',
  'worker.leaving': 'leaving',
  'worker.declined': null,
};

/** The outcome of a delivery cancelled before any worker took it. */
const CANCELLED_QUEUED: FailedOutcome = {
  status: 'failed',
  kind: 'cancelled',
  message: 'cancelled before it started',
  retryable: false,
};

/** Delayed-event id of the breaker's quiet window (cancelled by a trip). */
const QUIET_ID = 'breaker.quiet';

const without = (ids: string[], id: string): string[] => {
  const at = ids.indexOf(id);
  return at === -1 ? ids : [...ids.slice(0, at), ...ids.slice(at + 1)];
};

export const poolMachine = setup({
  types: {
    context: {} as PoolContext,
    events: {} as PoolEvent,
    input: {} as PoolInput,
    output: {} as PoolOutput,
    emitted: {} as PoolEmitted,
  },
  actors: {
    /** Slot: everything that must happen before intake opens (source connect, ledger sweep). */
    startup: fromPromise<void>(async () => undefined),
  },
  delays: {
    crashWindow: DELAY_DEFAULTS.crashWindow,
    /** The breaker's cooldown in force: it grows with each probe that crashes. */
    breakerCooldown: ({ context }) => context.cooldown,
  },
  guards: {
    /** A crash past `maxCrashes` in the window, or the half-open probe's crash. */
    breakerTrips: ({ context, event }) =>
      event.type === 'worker.outcome' &&
      isCrash(event.outcome) &&
      (context.crashes + 1 > context.maxCrashes || (context.breaker === 'half-open' && event.deliveryId === context.probe)),
    /**
     * A worker machine that ended in error (its process slot failed) counts as a crash; ending
     * so while it held the probe re-opens a half-open breaker.
     */
    errorTrips: ({ context, event }) =>
      context.crashes + 1 > context.maxCrashes ||
      (context.breaker === 'half-open' && event.type === 'worker.error' && event.held !== null && event.held === context.probe),
    breakerOpen: ({ context }) => context.breaker === 'open',
    pausedByBreaker: ({ context }) => context.pausedBy === 'breaker',
    pausedByUser: ({ context }) => context.pausedBy === 'user',
    drainRequested: ({ context }) => context.drainRequested,
    /** A warm spare that left by itself, exit 0, never having served: it cannot be kept warm. */
    spareLeftClean: ({ context, event }) =>
      context.spares > 0 &&
      event.type === 'worker.done' &&
      event.phase === 'ready' &&
      event.report.served === 0 &&
      event.report.exitCode === 0 &&
      event.report.signal === null,
    finished: ({ context }) => context.sourceDrained && context.backlog.length === 0 && context.live === 0,
  },
  actions: {
    // ---- slots filled by src/ (params typed by the *Params interfaces above) ----
    /** Settle the delivery with the attempt's outcome (ack, retry or dead-letter). */
    settle: (_: unknown, _params: unknown) => {},
    /** Give deliveries back to the source unsettled (pause, hard stop, late deliveries). */
    release: (_: unknown, _params: unknown) => {},
    /** Forget deliveries the source voided (its connection was lost): never settle them. */
    forget: (_: unknown, _params: unknown) => {},
    pauseIntake: () => {},
    resumeIntake: () => {},
    /** Stop taking new work; the source sends `source.drained` once it has nothing left. */
    closeIntake: () => {},
    /**
     * Start a worker machine as an actor of its own; it reports back with `worker.*` events
     * and ends with `worker.done` (or `worker.error`). Workers are not XState children: each
     * spawned or stopped child would copy the whole `snapshot.children` record, and each
     * stopped actor scans every timer of its system, so a pool of thousands would pay per
     * task for every live worker (measured: docs/benchmark-notes.md).
     */
    spawnWorker: (_: unknown, _params: unknown) => {},
    /** Send a command to a live worker (one that has ended ignores it). */
    tellWorker: (_: unknown, _params: unknown) => {},
    /** Send `worker.kill` to every live worker. */
    killWorkers: () => {},

    // ---- notifications ----
    emitReaped: emit(({ event }): PoolEmitted => ({ type: 'worker.reaped', report: reportOf(event) })),
    /**
     * Open the breaker and pause: a probe that crashed doubles the cooldown (up to the
     * ceiling); the quiet window that would reset it is called off.
     */
    tripBreaker: enqueueActions(({ context, enqueue }) => {
      const cooldown =
        context.breaker === 'half-open' ? Math.min(context.cooldown * 2, context.breakerMaxCooldown) : context.cooldown;
      const trips = context.trips + 1;
      enqueue.cancel(QUIET_ID);
      enqueue.assign({ breaker: 'open', trips, cooldown, probe: null, pausedBy: 'breaker' });
      enqueue.emit({ type: 'breaker.tripped', crashes: context.crashes, trips, cooldownMs: cooldown });
    }),
    /** The cooldown is over (or cut short by `resume`): the next attempt is the probe. */
    halfOpen: enqueueActions(({ context, enqueue }) => {
      if (context.breaker !== 'open') return;
      enqueue.assign({ breaker: 'half-open', probe: null });
      enqueue.emit({ type: 'breaker.half-open' });
    }),
    /** Leaving a pause: the user's or the breaker's, whichever it was, is over. */
    clearPause: assign({ pausedBy: null }),
    /** A user pause: it outlasts a breaker pause (only `resume` ends it). */
    pauseByUser: assign({ pausedBy: 'user' }),
    /**
     * The probe's outcome, when it is not a crash (that trips): it closes the breaker and
     * starts the quiet window. A probe cancelled proves nothing: the next attempt is the probe.
     */
    judgeProbe: enqueueActions(({ context, event, enqueue }) => {
      const { deliveryId, outcome } = event as WorkerEventOf<'worker.outcome'>;
      if (context.breaker !== 'half-open' || deliveryId === null || deliveryId !== context.probe) return;
      if (outcome.status === 'failed' && outcome.kind === 'cancelled') {
        enqueue.assign({ probe: null });
        return;
      }
      enqueue('closeBreaker');
    }),
    /** Close the breaker; its cooldown returns to `breakerCooldown` after a quiet `crashWindow`. */
    closeBreaker: enqueueActions(({ context, enqueue }) => {
      if (context.breaker === 'closed') return;
      enqueue.assign({ breaker: 'closed', probe: null });
      enqueue.cancel(QUIET_ID);
      enqueue.raise({ type: 'breaker.quiet' }, { delay: 'crashWindow', id: QUIET_ID });
      enqueue.emit({ type: 'breaker.closed' });
    }),
    resetCooldown: assign({ cooldown: ({ context }) => context.breakerCooldown }),
    /**
     * `pool.cancel` of a delivery: one in the backlog never runs (settled `cancelled` now);
     * one a worker holds is that worker's to end (it reports `cancelled` once reaped). A
     * delivery in neither place has an outcome already: nothing to do.
     */
    cancelTask: enqueueActions(({ context, event, enqueue }) => {
      const { deliveryId, workerId } = event as WorkerEventOf<'task.cancel'>;
      if (context.backlog.includes(deliveryId)) {
        enqueue.assign({ backlog: without(context.backlog, deliveryId) });
        enqueue({ type: 'settle', params: { deliveryId, outcome: CANCELLED_QUEUED } satisfies SettleParams });
      } else if (workerId !== null) {
        enqueue({ type: 'tellWorker', params: { workerId, command: { type: 'task.cancel', deliveryId } } satisfies TellParams });
      }
    }),
    markSourceDrained: assign({ sourceDrained: true }),
    requestDrain: assign({ drainRequested: true }),
    /** Draining keeps no spares. */
    noSpares: assign({ spares: 0 }),
    startFailed: assign({ sourceDrained: true, backlog: [], startError: ({ event }) => (event as { error?: unknown }).error }),
    /** Keep no spares from now on (the worker exits as soon as it starts: nothing stays warm). */
    stopSpares: enqueueActions(({ event, enqueue }) => {
      enqueue.assign({ spares: 0 });
      enqueue.emit({ type: 'spares.unkept', workerId: (event as WorkerEndEvent).workerId });
    }),

    // ---- pure bookkeeping ----
    enqueueDelivery: assign({
      backlog: ({ context, event }) => [...context.backlog, (event as { deliveryId: string }).deliveryId],
    }),
    /**
     * Follow a worker's report: its phase counts move, and it leaves the idle lists when it
     * leaves an idle phase. An outcome or acknowledgement settles its pending assignment.
     */
    track: enqueueActions(({ context, event, enqueue }) => {
      const report = event as WorkerToPoolEvent;
      if (report.type === 'worker.declined') return;
      const to = report.type === 'worker.outcome' ? report.to : PHASE_AFTER[report.type];
      if (to === null) return;
      const { workerId, from } = report;
      const phases = { ...context.phases };
      phases[from]--;
      phases[to]++;
      const update: Partial<PoolContext> = { phases };
      if (from === 'ready' && to !== 'ready') update.ready = without(context.ready, workerId);
      if (from === 'spawning') update.warming = without(context.warming, workerId);
      if (to === 'ready') update.ready = [...(update.ready ?? context.ready), workerId];
      const deliveryId = report.type === 'worker.running' || report.type === 'worker.outcome' ? report.deliveryId : null;
      if (deliveryId !== null && context.assigned.length > 0) {
        update.assigned = context.assigned.filter((a) => !(a.workerId === workerId && a.deliveryId === deliveryId));
      }
      enqueue.assign(update);
      if (from === 'leaving' || to === 'leaving') {
        enqueue.emit({ type: 'prefetch', prefetch: context.maxWorkers - phases.leaving });
      }
    }),
    /** Settle the attempt (a spare that failed has none) and count crashes. */
    workerReported: enqueueActions(({ event, enqueue }) => {
      const { deliveryId, outcome } = event as WorkerEventOf<'worker.outcome'>;
      if (deliveryId !== null) enqueue({ type: 'settle', params: { deliveryId, outcome } satisfies SettleParams });
      if (isCrash(outcome)) enqueue('countCrash');
    }),
    /** A worker could not take its assignment: the delivery goes back to the front of the backlog. */
    takeBack: assign(({ context, event }) => {
      const { workerId, deliveryId } = event as WorkerEventOf<'worker.declined'>;
      return {
        assigned: context.assigned.filter((a) => !(a.workerId === workerId && a.deliveryId === deliveryId)),
        backlog: [deliveryId, ...context.backlog],
        // A probe that never ran is let through again.
        probe: context.probe === deliveryId ? null : context.probe,
      };
    }),
    crashExpired: assign({ crashes: ({ context }) => Math.max(0, context.crashes - 1) }),
    countCrash: enqueueActions(({ context, enqueue }) => {
      enqueue.assign({ crashes: context.crashes + 1 });
      enqueue.raise({ type: 'crash.expired' }, { delay: 'crashWindow' });
    }),
    /** Free the ended worker's slot in the counts. */
    reap: enqueueActions(({ context, event, enqueue }) => {
      const { workerId, phase } = event as WorkerEndEvent;
      enqueue.assign({
        live: context.live - 1,
        phases: { ...context.phases, [phase]: context.phases[phase] - 1 },
        ready: phase === 'ready' ? without(context.ready, workerId) : context.ready,
        warming: phase === 'spawning' ? without(context.warming, workerId) : context.warming,
      });
      if (phase === 'leaving') enqueue.emit({ type: 'prefetch', prefetch: context.maxWorkers - (context.phases.leaving - 1) });
    }),
    /**
     * A worker that ended holding a delivery it never reported on (its machine failed) or
     * before an assignment reached it gives those deliveries back, to the front of the
     * backlog: they never ran.
     */
    reclaim: enqueueActions(({ context, event, enqueue }) => {
      const { workerId, held } = event as WorkerEndEvent;
      const unseen = context.assigned.filter((a) => a.workerId === workerId).map((a) => a.deliveryId);
      if (held === null && unseen.length === 0) return;
      const back = [...(held === null || unseen.includes(held) ? [] : [held]), ...unseen];
      enqueue.assign({
        assigned: unseen.length === 0 ? context.assigned : context.assigned.filter((a) => a.workerId !== workerId),
        backlog: [...back, ...context.backlog],
        probe: context.probe !== null && back.includes(context.probe) ? null : context.probe,
      });
    }),
    /**
     * Hand backlog deliveries to idle workers (ready ones first, then spares still spawning),
     * spawn workers just in time up to `maxWorkers`, then top up warm spares (draining sets
     * `spares` to 0). Constant work per delivery handed out, whatever the number of workers.
     */
    dispatch: enqueueActions(({ context, event, enqueue }) => {
      // A delivery being received joins the end of the backlog here (one context update, not
      // two: this runs once per task).
      const arrived = event.type === 'delivery' ? event.deliveryId : null;
      const idle = context.ready.length + context.warming.length;
      const full = context.live >= context.maxWorkers || context.phases.spawning >= context.maxSpawning;
      // Half-open: one delivery, the probe, and no spares until it is judged.
      const probing = context.breaker === 'half-open';
      const limit = probing ? (context.probe === null ? 1 : 0) : Infinity;
      const spares = probing ? 0 : context.spares;
      // Nothing can start (the common case while a burst waits for its wave), or nothing is
      // wanted: leave the context as it is, copying nothing.
      const waiting = context.backlog.length + (arrived === null ? 0 : 1);
      if ((full && idle === 0) || ((waiting === 0 || limit === 0) && (full || idle >= spares))) {
        if (arrived !== null) enqueue.assign({ backlog: [...context.backlog, arrived] });
        return;
      }
      const ready = [...context.ready];
      const warming = [...context.warming];
      // Read in place: the backlog is as long as the prefetch (thousands), so it is copied
      // once, without what was handed out, and only when something was.
      const backlog = arrived === null ? context.backlog : [...context.backlog, arrived];
      const assigned = [...context.assigned];
      let { seq, live } = context;
      let spawning = context.phases.spawning;
      const canSpawn = () => live < context.maxWorkers && spawning < context.maxSpawning;
      const spawn = (deliveryId: string | null) => {
        const id = `${WORKER_PREFIX}${++seq}`;
        live++;
        spawning++;
        if (deliveryId === null) warming.push(id);
        enqueue({ type: 'spawnWorker', params: { workerId: id, deliveryId, maxTasks: context.maxTasksPerWorker } satisfies SpawnParams });
      };
      let taken = 0;
      while (taken < backlog.length && taken < limit) {
        const deliveryId = backlog[taken];
        const workerId = ready.shift() ?? warming.shift();
        if (workerId !== undefined) {
          assigned.push({ workerId, deliveryId });
          enqueue({ type: 'tellWorker', params: { workerId, command: { type: 'task.assign', deliveryId } } satisfies TellParams });
        } else if (canSpawn()) {
          spawn(deliveryId);
        } else {
          break;
        }
        taken++;
      }
      while (ready.length + warming.length < spares && canSpawn()) spawn(null);
      enqueue.assign({
        ready,
        warming,
        assigned,
        backlog: taken === 0 ? backlog : backlog.slice(taken),
        seq,
        live,
        phases: { ...context.phases, spawning },
        ...(probing && taken > 0 ? { probe: backlog[0] } : {}),
      });
    }),
    /** Retire idle workers: draining keeps no spares. */
    retireIdle: enqueueActions(({ context, enqueue }) => {
      if (context.ready.length + context.warming.length === 0) return;
      for (const workerId of [...context.ready, ...context.warming]) {
        enqueue({ type: 'tellWorker', params: { workerId, command: { type: 'worker.retire' } } satisfies TellParams });
      }
      enqueue.assign({ ready: [], warming: [] });
    }),
    /**
     * Paused, the pool holds nothing it cannot run: deliveries waiting in the backlog go back
     * to the source (a broker gives them to other hosts). Last first, so that a source that
     * puts each one back at the front of its queue keeps their order.
     */
    releaseBacklog: enqueueActions(({ context, enqueue }) => {
      if (context.backlog.length === 0) return;
      enqueue({ type: 'release', params: { deliveryIds: [...context.backlog].reverse() } satisfies ReleaseParams });
      enqueue.assign({ backlog: [] });
    }),
    /** Hard stop: kill every worker, forget the backlog. */
    killAll: enqueueActions(({ enqueue }) => {
      enqueue('killWorkers');
      enqueue.assign({ ready: [], warming: [], assigned: [], backlog: [], sourceDrained: true });
    }),
    /**
     * The source lost its connection, and with it what it had delivered: deliveries not yet
     * started are dropped (the broker delivers them again); attempts already running finish,
     * and their outcomes are dropped by the `forget` slot rather than settled.
     */
    dropVoided: enqueueActions(({ context, enqueue }) => {
      enqueue({ type: 'forget', params: { deliveryIds: context.backlog } satisfies ForgetParams });
      enqueue.assign({ backlog: [] });
    }),
  },
}).createMachine({
  id: 'pool',
  context: ({ input }) => ({
    ...input,
    breakerCooldown: input.breakerCooldown ?? DELAY_DEFAULTS.breakerCooldown,
    breakerMaxCooldown: input.breakerMaxCooldown ?? DELAY_DEFAULTS.breakerMaxCooldown,
    seq: 0,
    live: 0,
    phases: NO_PHASES,
    ready: [],
    warming: [],
    assigned: [],
    backlog: [],
    crashes: 0,
    breaker: 'closed',
    trips: 0,
    cooldown: input.breakerCooldown ?? DELAY_DEFAULTS.breakerCooldown,
    probe: null,
    pausedBy: null,
    sourceDrained: false,
    drainRequested: false,
    startError: null,
  }),
  on: {
    'worker.ready': { actions: 'track' },
    'worker.running': { actions: 'track' },
    'worker.outcome': { actions: ['track', 'workerReported'] },
    'worker.leaving': { actions: 'track' },
    'worker.declined': { actions: 'takeBack' },
    'crash.expired': { actions: 'crashExpired' },
    'breaker.quiet': { actions: 'resetCooldown' },
    'task.cancel': { actions: 'cancelTask' },
    'worker.done': { actions: ['emitReaped', 'reclaim', 'reap'] },
    'worker.error': { actions: ['emitReaped', 'reclaim', 'reap', 'countCrash'] },
    'source.drained': { actions: 'markSourceDrained' },
    'source.lost': { actions: 'dropVoided' },
  },
  initial: 'starting',
  states: {
    starting: {
      invoke: {
        id: 'startup',
        src: 'startup',
        onDone: [
          { guard: 'drainRequested', target: 'draining' },
          { guard: 'pausedByUser', target: 'paused' },
          { target: 'running' },
        ],
        // What was delivered while starting goes back to the source: it never ran.
        onError: {
          target: 'stopped',
          actions: [{ type: 'release', params: { deliveryIds: 'all' } satisfies ReleaseParams }, 'startFailed'],
        },
      },
      on: {
        delivery: { actions: 'enqueueDelivery' },
        // Carried out once started (a SIGTERM during a slow connect still drains).
        drain: { actions: 'requestDrain' },
        pause: { actions: 'pauseByUser' },
        resume: { actions: 'clearPause' },
        stop: 'stopping',
      },
    },
    running: {
      entry: 'dispatch',
      on: {
        // One update for both: the delivery joins the backlog as dispatch hands it out.
        delivery: { actions: 'dispatch' },
        'worker.ready': { actions: ['track', 'dispatch'] },
        // A worker out of `spawning` frees a place in the wave of starts.
        'worker.running': { actions: ['track', 'dispatch'] },
        'worker.leaving': { actions: ['track', 'dispatch'] },
        'worker.declined': { actions: ['takeBack', 'dispatch'] },
        'worker.outcome': [
          { guard: 'breakerTrips', target: 'paused', actions: ['track', 'workerReported', 'tripBreaker'] },
          { actions: ['track', 'workerReported', 'judgeProbe', 'dispatch'] },
        ],
        'worker.done': [
          { guard: 'spareLeftClean', actions: ['emitReaped', 'reclaim', 'reap', 'stopSpares', 'dispatch'] },
          { actions: ['emitReaped', 'reclaim', 'reap', 'dispatch'] },
        ],
        // Counted like a crash, or a slot that fails at every start would respawn forever.
        'worker.error': [
          { guard: 'errorTrips', target: 'paused', actions: ['emitReaped', 'reclaim', 'reap', 'countCrash', 'tripBreaker'] },
          { actions: ['emitReaped', 'reclaim', 'reap', 'countCrash', 'dispatch'] },
        ],
        pause: { target: 'paused', actions: 'pauseByUser' },
        drain: 'draining',
        stop: 'stopping',
      },
    },
    paused: {
      entry: ['pauseIntake', 'releaseBacklog'],
      after: {
        breakerCooldown: [
          { guard: 'pausedByBreaker', target: 'running', actions: ['resumeIntake', 'clearPause', 'halfOpen'] },
          // Under a user pause the breaker still goes half-open; its probe waits for `resume`.
          { guard: 'breakerOpen', actions: 'halfOpen' },
        ],
      },
      on: {
        // A delivery already on its way when intake paused waits in the backlog; none are dispatched while paused.
        delivery: { actions: 'enqueueDelivery' },
        // A user pause outlasts a breaker pause: only `resume` ends it.
        pause: { actions: 'pauseByUser' },
        // `resume` cuts an open breaker's cooldown short: the next attempt is its probe.
        resume: { target: 'running', actions: ['resumeIntake', 'clearPause', 'halfOpen'] },
        // Draining delivers what the source still holds, so intake reopens (then closes).
        drain: { target: 'draining', actions: ['resumeIntake', 'clearPause'] },
        stop: 'stopping',
      },
    },
    draining: {
      // Draining finishes what is queued: the breaker no longer holds anything back.
      entry: ['noSpares', 'closeBreaker', 'closeIntake', 'dispatch', 'retireIdle'],
      always: { guard: 'finished', target: 'stopped' },
      on: {
        // One update for both: the delivery joins the backlog as dispatch hands it out.
        delivery: { actions: 'dispatch' },
        'worker.done': { actions: ['emitReaped', 'reclaim', 'reap', 'dispatch'] },
        'worker.error': { actions: ['emitReaped', 'reclaim', 'reap', 'countCrash', 'dispatch'] },
        // No worker idles here (each is retired when ready), so none leaves on an idle timeout.
        'worker.ready': { actions: ['track', 'dispatch', 'retireIdle'] },
        'worker.running': { actions: ['track', 'dispatch'] },
        'worker.declined': { actions: ['takeBack', 'dispatch'] },
        // A reused worker's outcome makes it idle (`to: ready`): retired too, unless dispatched.
        'worker.outcome': { actions: ['track', 'workerReported', 'dispatch', 'retireIdle'] },
        stop: 'stopping',
      },
    },
    stopping: {
      // Intake pauses first, so released deliveries are not delivered straight back.
      entry: ['pauseIntake', 'closeIntake', { type: 'release', params: { deliveryIds: 'all' } satisfies ReleaseParams }, 'killAll'],
      always: { guard: 'finished', target: 'stopped' },
      on: {
        // Every delivery still held was released, so a late outcome is dropped rather than
        // settled twice (its worker is still counted until it is reaped).
        'worker.outcome': { actions: 'track' },
        'worker.declined': {},
        // Everything held was released: there is nothing left to cancel.
        'task.cancel': {},
        // Everything held was released: nothing comes back to the backlog.
        'worker.done': { actions: ['emitReaped', 'reap'] },
        'worker.error': { actions: ['emitReaped', 'reap', 'countCrash'] },
        // Late deliveries go straight back.
        delivery: {
          actions: { type: 'release', params: lateParams },
        },
      },
    },
    stopped: {
      type: 'final',
    },
  },
  output: ({ context }) => (context.startError === null ? {} : { error: context.startError }),
});

export type PoolActor = ActorRefFrom<typeof poolMachine>;
