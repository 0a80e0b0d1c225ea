import { assign, enqueueActions, fromPromise, setup } from 'xstate';
import type { ActorRefFrom } from 'xstate';
import { isCrash } from './types.js';
import type { Outcome, WorkerReport } from './types.js';
import { workerMachine } from './worker.js';
import type { WorkerCommand, WorkerInput, WorkerToPoolEvent } from './worker.js';

/**
 * The pool machine: starting → running ⇄ paused → draining → stopped.
 *
 * It owns the worker machines (spawned on demand, reaped on `xstate.done.actor.worker.*`), a
 * backlog of delivery ids bounded by the source's prefetch, and the crash breaker. Deliveries,
 * settlements and intake control are named slots filled by `src/`.
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
}

/** A live worker as the pool sees it. */
export interface WorkerSlot {
  /**
   * `starting`: spawned, not yet ready; `ready`: idle and assignable; `busy`: running a task;
   * `leaving`: reported its outcome or was retired, and is on its way to being reaped.
   */
  status: 'starting' | 'ready' | 'busy' | 'leaving';
  deliveryId: string | null;
}

export interface PoolContext extends PoolInput {
  /** Monotonic: child ids must be unique or XState orphans the earlier child. */
  seq: number;
  workers: Record<string, WorkerSlot>;
  /** Delivery ids received and not yet handed to a worker, oldest first. */
  backlog: string[];
  /** Crashes within the sliding window. */
  crashes: number;
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
  | { type: 'crash.expired' }
  | WorkerToPoolEvent
  | { type: `xstate.done.actor.${string}`; actorId: string; output: WorkerReport }
  | { type: `xstate.error.actor.${string}`; actorId: string; error: unknown };

export interface PoolOutput {
  /** Set when the pool could not start. */
  error?: unknown;
}

const WORKER_PREFIX = 'worker.';

type Workers = PoolContext['workers'];

const liveCount = (workers: Workers) => Object.keys(workers).length;

/** A worker that could take a delivery now or once started: a warm spare. */
const isIdle = (w: WorkerSlot) => w.deliveryId === null && (w.status === 'ready' || w.status === 'starting');

const idleCount = (workers: Workers) => Object.values(workers).filter(isIdle).length;

/**
 * A delivery a departing worker still held (handed to it after it had stopped listening) goes
 * back to the front of the backlog, not to the source: it was never run.
 */
const requeue = (backlog: string[], deliveryId: string | null): string[] =>
  deliveryId === null ? backlog : [deliveryId, ...backlog];

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
  deliveryIds: string[];
}
export interface ReapedParams {
  report: WorkerReport;
}
export interface BreakerParams {
  crashes: number;
}

/** Params of the `reaped` slot for an `xstate.done.actor.worker.*` (or error) event. */
const reapedParams = ({ event }: { event: PoolEvent }): ReapedParams => {
  const { actorId, output } = event as { actorId: string; output?: WorkerReport };
  return {
    report: output ?? { workerId: actorId, pid: null, exitCode: null, signal: null, served: 0, last: null },
  };
};

/** Everything held and not settled: the backlog and the deliveries on workers. */
const heldParams = ({ context }: { context: PoolContext }): ReleaseParams => ({
  deliveryIds: [
    ...context.backlog,
    ...Object.values(context.workers)
      .map((w) => w.deliveryId)
      .filter((d): d is string => d !== null),
  ],
});


/** Runs after `workerReported`, so the count already includes this crash. */
const breakerParams = ({ context }: { context: PoolContext }): BreakerParams => ({ crashes: context.crashes });

const lateParams = ({ event }: { event: PoolEvent }): ReleaseParams => ({
  deliveryIds: [(event as WorkerEventOf<'delivery'>).deliveryId],
});

export const poolMachine = setup({
  types: {
    context: {} as PoolContext,
    events: {} as PoolEvent,
    input: {} as PoolInput,
    output: {} as PoolOutput,
  },
  actors: {
    worker: workerMachine,
    /** Slot: everything that must happen before intake opens (source connect, ledger sweep). */
    startup: fromPromise<void>(async () => undefined),
  },
  delays: {
    crashWindow: 60_000,
    breakerCooldown: 5_000,
  },
  guards: {
    breakerTrips: ({ context, event }) =>
      event.type === 'worker.outcome' && isCrash(event.outcome) && context.crashes + 1 > context.maxCrashes,
    /** A worker machine that ended in error (its process slot failed) counts as a crash. */
    errorTrips: ({ context }) => context.crashes + 1 > context.maxCrashes,
    pausedByBreaker: ({ context }) => context.pausedBy === 'breaker',
    pausedByUser: ({ context }) => context.pausedBy === 'user',
    drainRequested: ({ context }) => context.drainRequested,
    finished: ({ context }) => context.sourceDrained && context.backlog.length === 0 && liveCount(context.workers) === 0,
  },
  actions: {
    // ---- slots filled by src/ (params typed by the *Params interfaces above) ----
    /** Settle the delivery with the attempt's outcome (ack, retry or dead-letter). */
    settle: (_: unknown, _params: unknown) => {},
    /** Give deliveries back to the source unsettled (hard stop only). */
    release: (_: unknown, _params: unknown) => {},
    /** A worker machine reached `reaped`. */
    reaped: (_: unknown, _params: unknown) => {},
    pauseIntake: () => {},
    resumeIntake: () => {},
    /** Stop taking new work; the source sends `source.drained` once it has nothing left. */
    closeIntake: () => {},
    breakerTripped: (_: unknown, _params: unknown) => {},

    // ---- pure bookkeeping ----
    enqueueDelivery: assign({
      backlog: ({ context, event }) => [...context.backlog, (event as { deliveryId: string }).deliveryId],
    }),
    workerReady: assign({
      workers: ({ context, event }) => {
        const { workerId } = event as Extract<PoolEvent, { type: 'worker.ready' }>;
        const slot = context.workers[workerId];
        if (!slot) return context.workers;
        return { ...context.workers, [workerId]: { status: 'ready', deliveryId: null } };
      },
    }),
    /**
     * Settle the attempt (a spare that failed has none) and count crashes. A slot holding a
     * different delivery was handed it after the worker had already failed (the outcome was
     * still on its way): that delivery goes back to the front of the backlog.
     */
    workerReported: enqueueActions(({ context, event, enqueue }) => {
      const { workerId, deliveryId, outcome } = event as Extract<PoolEvent, { type: 'worker.outcome' }>;
      if (deliveryId !== null) enqueue({ type: 'settle', params: { deliveryId, outcome } satisfies SettleParams });
      const slot = context.workers[workerId];
      if (slot) {
        const stranded = slot.deliveryId === deliveryId ? null : slot.deliveryId;
        enqueue.assign({
          workers: { ...context.workers, [workerId]: { status: 'leaving', deliveryId: null } },
          backlog: requeue(context.backlog, stranded),
        });
      }
      if (isCrash(outcome)) enqueue('countCrash');
    }),
    crashExpired: assign({ crashes: ({ context }) => Math.max(0, context.crashes - 1) }),
    countCrash: enqueueActions(({ context, enqueue }) => {
      enqueue.assign({ crashes: context.crashes + 1 });
      enqueue.raise({ type: 'crash.expired' }, { delay: 'crashWindow' });
    }),
    /**
     * A worker that leaves while the pool still counts it idle may have been handed a
     * delivery it ignored: that delivery goes back to the front of the backlog.
     */
    workerLeaving: assign(({ context, event }) => {
      const { workerId } = event as Extract<PoolEvent, { type: 'worker.leaving' }>;
      const slot = context.workers[workerId];
      if (!slot) return {};
      return {
        workers: { ...context.workers, [workerId]: { status: 'leaving', deliveryId: null } },
        backlog: requeue(context.backlog, slot.deliveryId),
      };
    }),
    /** Stop the finished child and free its slot; a delivery it still held goes back to the backlog. */
    reap: enqueueActions(({ context, event, enqueue }) => {
      const { actorId } = event as { actorId: string };
      const slot = context.workers[actorId];
      enqueue.stopChild(actorId);
      if (!slot) return;
      const workers: Record<string, WorkerSlot> = {};
      for (const id in context.workers) if (id !== actorId) workers[id] = context.workers[id];
      enqueue.assign({ workers, backlog: requeue(context.backlog, slot.deliveryId) });
    }),
    /**
     * Hand backlog deliveries to idle workers, spawn workers just in time up to `maxWorkers`,
     * then top up warm spares (draining sets `spares` to 0).
     */
    dispatch: enqueueActions(({ context, enqueue }) => {
      // Nothing to hand out and no spare to start (the common case after an outcome, a
      // leaving or a reap): leave the context as it is.
      if (context.backlog.length === 0) {
        if (liveCount(context.workers) >= context.maxWorkers || idleCount(context.workers) >= context.spares) return;
      }
      const workers = { ...context.workers };
      const backlog = [...context.backlog];
      let seq = context.seq;
      const spawn = (deliveryId: string | null) => {
        const id = `${WORKER_PREFIX}${++seq}`;
        workers[id] = { status: 'starting', deliveryId };
        enqueue.spawnChild('worker', {
          id,
          input: { workerId: id, deliveryId, maxTasks: context.maxTasksPerWorker } satisfies WorkerInput,
        });
      };
      while (backlog.length > 0) {
        const idle =
          Object.keys(workers).find((id) => workers[id].status === 'ready') ??
          Object.keys(workers).find((id) => workers[id].status === 'starting' && workers[id].deliveryId === null);
        const deliveryId = backlog[0];
        if (idle !== undefined) {
          workers[idle] = { status: workers[idle].status === 'ready' ? 'busy' : 'starting', deliveryId };
          enqueue.sendTo(idle, { type: 'task.assign', deliveryId } satisfies WorkerCommand);
        } else if (liveCount(workers) < context.maxWorkers) {
          spawn(deliveryId);
        } else {
          break;
        }
        backlog.shift();
      }
      while (idleCount(workers) < context.spares && liveCount(workers) < context.maxWorkers) spawn(null);
      enqueue.assign({ workers, backlog, seq });
    }),
    /** Retire idle workers: draining keeps no spares. */
    retireIdle: enqueueActions(({ context, enqueue }) => {
      const workers = { ...context.workers };
      for (const [id, slot] of Object.entries(context.workers)) {
        if (!isIdle(slot)) continue;
        workers[id] = { status: 'leaving', deliveryId: null };
        enqueue.sendTo(id, { type: 'worker.retire' } satisfies WorkerCommand);
      }
      enqueue.assign({ workers });
    }),
    /** Hard stop: kill every worker, release every delivery not yet settled. */
    killAll: enqueueActions(({ context, enqueue }) => {
      const workers: Record<string, WorkerSlot> = {};
      for (const id of Object.keys(context.workers)) {
        workers[id] = { status: 'leaving', deliveryId: null };
        enqueue.sendTo(id, { type: 'worker.kill' } satisfies WorkerCommand);
      }
      enqueue.assign({ workers, backlog: [], sourceDrained: true });
    }),
  },
}).createMachine({
  id: 'pool',
  context: ({ input }) => ({
    ...input,
    seq: 0,
    workers: {},
    backlog: [],
    crashes: 0,
    pausedBy: null,
    sourceDrained: false,
    drainRequested: false,
    startError: null,
  }),
  on: {
    'worker.ready': { actions: 'workerReady' },
    'worker.outcome': { actions: ['workerReported'] },
    'worker.leaving': { actions: 'workerLeaving' },
    'crash.expired': { actions: 'crashExpired' },
    'xstate.done.actor.worker.*': { actions: [{ type: 'reaped', params: reapedParams }, 'reap'] },
    'xstate.error.actor.worker.*': { actions: [{ type: 'reaped', params: reapedParams }, 'reap', 'countCrash'] },
    'source.drained': { actions: assign({ sourceDrained: true }) },
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
        onError: { target: 'stopped', actions: assign({ sourceDrained: true, startError: ({ event }) => event.error }) },
      },
      on: {
        delivery: { actions: 'enqueueDelivery' },
        // Carried out once started (a SIGTERM during a slow connect still drains).
        drain: { actions: assign({ drainRequested: true }) },
        pause: { actions: assign({ pausedBy: 'user' }) },
        resume: { actions: assign({ pausedBy: null }) },
        stop: 'stopping',
      },
    },
    running: {
      entry: 'dispatch',
      on: {
        delivery: { actions: ['enqueueDelivery', 'dispatch'] },
        'worker.ready': { actions: ['workerReady', 'dispatch'] },
        'worker.leaving': { actions: ['workerLeaving', 'dispatch'] },
        'worker.outcome': [
          {
            guard: 'breakerTrips',
            target: 'paused',
            actions: [
              'workerReported',
              assign({ pausedBy: 'breaker' }),
              { type: 'breakerTripped', params: breakerParams },
            ],
          },
          { actions: ['workerReported', 'dispatch'] },
        ],
        'xstate.done.actor.worker.*': { actions: [{ type: 'reaped', params: reapedParams }, 'reap', 'dispatch'] },
        // Counted like a crash, or a slot that fails at every start would respawn forever.
        'xstate.error.actor.worker.*': [
          {
            guard: 'errorTrips',
            target: 'paused',
            actions: [
              { type: 'reaped', params: reapedParams },
              'reap',
              'countCrash',
              assign({ pausedBy: 'breaker' }),
              { type: 'breakerTripped', params: breakerParams },
            ],
          },
          { actions: [{ type: 'reaped', params: reapedParams }, 'reap', 'countCrash', 'dispatch'] },
        ],
        pause: { target: 'paused', actions: assign({ pausedBy: 'user' }) },
        drain: 'draining',
        stop: 'stopping',
      },
    },
    paused: {
      entry: 'pauseIntake',
      after: {
        breakerCooldown: {
          guard: 'pausedByBreaker',
          target: 'running',
          actions: ['resumeIntake', assign({ pausedBy: null })],
        },
      },
      on: {
        // Deliveries already in flight wait in the backlog; none are dispatched while paused.
        delivery: { actions: 'enqueueDelivery' },
        // A user pause outlasts a breaker pause: only `resume` ends it.
        pause: { actions: assign({ pausedBy: 'user' }) },
        resume: { target: 'running', actions: ['resumeIntake', assign({ pausedBy: null })] },
        // Draining delivers what the source still holds, so intake reopens (then closes).
        drain: { target: 'draining', actions: ['resumeIntake', assign({ pausedBy: null })] },
        stop: 'stopping',
      },
    },
    draining: {
      entry: [assign({ spares: 0 }), 'closeIntake', 'dispatch', 'retireIdle'],
      always: { guard: 'finished', target: 'stopped' },
      on: {
        delivery: { actions: ['enqueueDelivery', 'dispatch'] },
        'xstate.done.actor.worker.*': { actions: [{ type: 'reaped', params: reapedParams }, 'reap', 'dispatch'] },
        'xstate.error.actor.worker.*': { actions: [{ type: 'reaped', params: reapedParams }, 'reap', 'countCrash', 'dispatch'] },
        // No worker idles here (each is retired when ready), so none leaves on an idle timeout.
        'worker.ready': { actions: ['workerReady', 'dispatch', 'retireIdle'] },
        'worker.outcome': { actions: ['workerReported', 'dispatch'] },
        stop: 'stopping',
      },
    },
    stopping: {
      // Intake pauses first, so released deliveries are not delivered straight back.
      entry: ['pauseIntake', 'closeIntake', { type: 'release', params: heldParams }, 'killAll'],
      always: { guard: 'finished', target: 'stopped' },
      on: {
        // Every delivery still held was released by killAll, so a late outcome is dropped
        // rather than settled twice.
        'worker.outcome': {},
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
