import { assign, emit, enqueueActions, fromCallback, sendTo, setup } from 'xstate';
import { DELAY_DEFAULTS } from './defaults.js';
import { isRetryable } from './types.js';
import type { ErrorInfo, FailedOutcome, FailureKind, Outcome, ProcessExit, WorkerReport } from './types.js';

/**
 * The worker machine: one per child process.
 *
 * spawning → ready → running → (resolved | failed) → terminating → reaped
 *
 * Every side effect goes through the `process` actor slot (invoked at the root, so it lives
 * exactly as long as the machine and its cleanup always runs) and the named delays.
 */

/**
 * A process's answer to its task, when the answer and the exit come together: a command's
 * exit status and stdout are both known only once it has exited.
 */
export type ProcessAnswer =
  | { status: 'resolved'; result: unknown }
  /** `kind` spawn: it never got to run the task (a module worker whose handler failed to load). */
  | { status: 'failed'; error: ErrorInfo; retryable: boolean; kind?: 'error' | 'spawn' };

/**
 * Events the process actor sends back to its worker machine. A forked module worker reports
 * each step (`proc.spawned`, `proc.ready`, `proc.result`, `proc.exit`); a process the spawn
 * host starts (a command, a single-use module worker), ready once it has started and done
 * when it exits, folds them: `proc.ready` with its pid, then `proc.exit` with its answer.
 */
export type ProcessEvent =
  | { type: 'proc.spawned'; pid: number }
  | { type: 'proc.ready'; pid?: number }
  | { type: 'proc.result'; result: unknown }
  | { type: 'proc.failed'; error: ErrorInfo; retryable: boolean }
  /**
   * The task of `proc.run` for `deliveryId` never reached the process: it was gone when the
   * task was written (a reused worker killed while idle). Not an attempt: the delivery goes back.
   */
  | { type: 'proc.unsent'; deliveryId: string }
  | { type: 'proc.spawnError'; error: ErrorInfo }
  | ({ type: 'proc.exit'; answer?: ProcessAnswer } & ProcessExit);

/** Commands the worker machine sends to its process actor. */
export type ProcessCommand =
  | { type: 'proc.run'; deliveryId: string; last: boolean }
  /** SIGTERM to the process group; `cancelled`: its task was cancelled (a module worker is told). */
  | { type: 'proc.terminate'; cancelled?: true }
  | { type: 'proc.kill' };

/** Events the pool sends to a worker. */
export type WorkerCommand =
  | { type: 'task.assign'; deliveryId: string }
  /**
   * End the attempt on `deliveryId` (`pool.cancel`): the process group gets SIGTERM, then
   * SIGKILL after `killGrace`, and once it is reaped the attempt's outcome is `cancelled`,
   * whatever the process did on its way out. Ignored unless the worker holds that delivery.
   */
  | { type: 'task.cancel'; deliveryId: string }
  | { type: 'worker.retire' }
  | { type: 'worker.kill' };

export type WorkerEvent = ProcessEvent | WorkerCommand;

/**
 * Where a worker stands, as the pool sees it: the phase it last reported. Every report names
 * the phase it leaves (`from`), so the pool keeps per-phase counts without a record per
 * worker. `spawning` is where every worker starts (the pool counts the spawn itself).
 */
export type WorkerPhase = 'spawning' | 'ready' | 'running' | 'leaving';

/**
 * What a worker reports to the pool, emitted (`actor.on`): the pool's owner relays each to
 * the pool machine. Each moves it from `from` to a phase its type names.
 */
export type WorkerToPoolEvent =
  /** → `ready`: idle and assignable (a warm spare, or a reused worker between tasks). */
  | { type: 'worker.ready'; workerId: string; from: WorkerPhase }
  /**
   * → `running`: it took `deliveryId` (its acknowledgement of a `task.assign`, or of its
   * input) and began the attempt, in process `pid` (null if the driver has not said it).
   */
  | { type: 'worker.running'; workerId: string; from: WorkerPhase; deliveryId: string; pid: number | null }
  /**
   * → `to`: the attempt ended. `to` is `ready` for a reused worker that resolved and takes
   * another task (one report, not an outcome and then `worker.ready`: this is the reused
   * worker's path per task), else `leaving`. `deliveryId` is null for a spare that failed to
   * start or died while idle: no task, but a crash all the same.
   */
  | { type: 'worker.outcome'; workerId: string; from: WorkerPhase; to: 'ready' | 'leaving'; deliveryId: string | null; outcome: Outcome }
  /** → `leaving`: terminating without an outcome to report (retired, killed, idle too long). */
  | { type: 'worker.leaving'; workerId: string; from: WorkerPhase }
  /**
   * A `task.assign` it could not take (it was already busy or leaving), or a task its process
   * was gone before it could read (`proc.unsent`): the delivery goes back, not an attempt.
   */
  | { type: 'worker.declined'; workerId: string; deliveryId: string };

export interface WorkerInput {
  workerId: string;
  /** Assigned at spawn time (just in time); absent for a warm spare. */
  deliveryId?: string | null;
  /** Tasks this worker may serve before it retires (1 = single use). */
  maxTasks: number;
}

export interface ProcessInput {
  workerId: string;
  /**
   * The delivery the worker was spawned for, if any: a driver may hand its task over with the
   * spawn (a command's stdin) instead of waiting for `proc.run`. `proc.run` still follows.
   */
  deliveryId: string | null;
}

export interface WorkerContext {
  workerId: string;
  maxTasks: number;
  pid: number | null;
  deliveryId: string | null;
  served: number;
  last: WorkerReport['last'];
  exit: ProcessExit | null;
  /** The process was told its current task is its last; it exits by itself. */
  expectExit: boolean;
  /** The phase last reported to the pool. */
  reported: WorkerPhase;
  /** Its attempt was cancelled: it reports `cancelled` once its process is reaped. */
  cancelled: boolean;
}

/** A failed outcome; `markedFinal`: the worker said not to retry it. */
const failure = (kind: FailureKind, message: string, extra: Partial<FailedOutcome> = {}, markedFinal = false): FailedOutcome => ({
  status: 'failed',
  kind,
  message,
  ...extra,
  retryable: isRetryable(kind, markedFinal),
});

/** The outcome of an attempt cancelled while a worker held it. */
const CANCELLED: FailedOutcome = failure('cancelled', 'cancelled while it ran; the worker was stopped');

/** An error's message for an outcome: never empty, so that an error thrown bare still says what it was. */
const describeError = (error: ErrorInfo): string => error.message || `${error.name ?? 'Error'} (thrown without a message)`;

const describeExit = (exit: ProcessExit): string =>
  exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;

const withDetail = (message: string, exit: ProcessExit): string =>
  exit.detail ? `${message}: ${exit.detail}` : message;

/** Classify a process exit that happened while a task was running. */
export function exitOutcome(exit: ProcessExit): FailedOutcome {
  const extra = { exitCode: exit.code, signal: exit.signal };
  if (exit.memory) {
    return failure('memory', withDetail(`worker exceeded its memory cap (${describeExit(exit)})`, exit), extra);
  }
  return failure('crash', withDetail(`worker died during the task (${describeExit(exit)})`, exit), extra);
}

/** A worker that resolved takes another task: its process is alive and has tasks left to serve. */
const isReusable = (context: WorkerContext): boolean => context.exit === null && context.served < context.maxTasks;

export const workerMachine = setup({
  types: {
    context: {} as WorkerContext,
    events: {} as WorkerEvent,
    input: {} as WorkerInput,
    output: {} as WorkerReport,
    emitted: {} as WorkerToPoolEvent,
  },
  actors: {
    /** Slot: drives one OS process. Filled by the driver in `src/`, by fakes in tests. */
    process: fromCallback<ProcessCommand, ProcessInput>(() => undefined),
  },
  delays: {
    spawnTimeout: DELAY_DEFAULTS.spawnTimeout,
    taskTimeout: DELAY_DEFAULTS.taskTimeout,
    killGrace: DELAY_DEFAULTS.killGrace,
    idleTimeout: DELAY_DEFAULTS.idleTimeout,
  },
  guards: {
    hasTask: ({ context }) => context.deliveryId !== null,
    exited: ({ context }) => context.exit !== null,
    expectsExit: ({ context }) => context.expectExit,
    reusable: ({ context }) => isReusable(context),
    hasServed: ({ context }) => context.served > 0,
    cleanExitUnused: ({ context, event }) =>
      context.served === 0 && event.type === 'proc.exit' && event.code === 0 && event.signal === null && !event.memory,
    answeredResolved: ({ event }) => event.type === 'proc.exit' && event.answer?.status === 'resolved',
    answeredFailed: ({ event }) => event.type === 'proc.exit' && event.answer?.status === 'failed',
    /** A cancel of the delivery this worker holds (a late one, for another, is ignored). */
    cancelsTask: ({ context, event }) =>
      event.type === 'task.cancel' && context.deliveryId !== null && event.deliveryId === context.deliveryId,
    wasCancelled: ({ context }) => context.cancelled && context.deliveryId !== null,
    /** The task it runs now is the one that could not be sent. */
    unsentTask: ({ context, event }) => event.type === 'proc.unsent' && context.deliveryId !== null && event.deliveryId === context.deliveryId,
  },
  actions: {
    /** Report the attempt's outcome to the pool and detach the delivery. */
    report: enqueueActions(({ context, enqueue }, params: { outcome: Outcome }) => {
      // A worker without a task (a spare) reports only failures (it could not start, or died
      // while idle), so that the crash breaker sees them: else such spares would be
      // respawned without end.
      if (context.deliveryId === null && params.outcome.status !== 'failed') return;
      // The `resolved` state's choice, made here so that the pool hears it with the outcome.
      const to = params.outcome.status === 'resolved' && isReusable(context) ? 'ready' : 'leaving';
      enqueue.emit({
        type: 'worker.outcome',
        workerId: context.workerId,
        from: context.reported,
        to,
        deliveryId: context.deliveryId,
        outcome: params.outcome,
      } satisfies WorkerToPoolEvent);
      enqueue.assign({
        deliveryId: null,
        last: params.outcome.status === 'resolved' ? 'resolved' : params.outcome.kind,
        reported: to,
      });
    }),
    runTask: sendTo('process', ({ context }): ProcessCommand => ({
      type: 'proc.run',
      deliveryId: context.deliveryId!,
      last: context.served + 1 >= context.maxTasks,
    })),
    recordExit: assign({
      exit: ({ event }) => {
        const { code, signal, memory, detail } = event as Extract<WorkerEvent, { type: 'proc.exit' }>;
        return { code, signal, memory, detail };
      },
    }),
    /** The delivery the pool assigned (`task.assign`) is this worker's task. */
    takeTask: assign({ deliveryId: ({ event }) => (event as Extract<WorkerEvent, { type: 'task.assign' }>).deliveryId }),
    recordPid: assign({ pid: ({ context, event }) => (event as { pid?: number }).pid ?? context.pid }),
    /** The process will not exit by itself any more: it has to be signalled. */
    unexpectExit: assign({ expectExit: false }),
    /**
     * Cancelled: the process is signalled at once (not awaited, even on its last task), and
     * the outcome waits for its exit.
     */
    markCancelled: assign({ cancelled: true, expectExit: false }),
    /** Hard stop: the delivery is released by the pool, not settled. */
    dropTask: assign({ deliveryId: null, expectExit: false }),
    /** Idle: the pool learns it is assignable, unless the outcome it reported said so already. */
    announceReady: enqueueActions(({ context, enqueue }) => {
      if (context.reported === 'ready') return;
      enqueue.emit({ type: 'worker.ready', workerId: context.workerId, from: context.reported } satisfies WorkerToPoolEvent);
      enqueue.assign({ reported: 'ready' });
    }),
    /** The attempt begins: counted as served (its last when it reaches `maxTasks`), and told to the pool. */
    startAttempt: enqueueActions(({ context, enqueue }) => {
      enqueue.emit({
        type: 'worker.running',
        workerId: context.workerId,
        from: context.reported,
        deliveryId: context.deliveryId!,
        pid: context.pid,
      } satisfies WorkerToPoolEvent);
      const served = context.served + 1;
      enqueue.assign({ served, expectExit: served >= context.maxTasks, reported: 'running' });
    }),
    /** Entering `terminating`: unless an outcome said so already, the pool learns it is leaving. */
    announceLeaving: enqueueActions(({ context, enqueue }) => {
      if (context.reported === 'leaving') return;
      enqueue.emit({ type: 'worker.leaving', workerId: context.workerId, from: context.reported } satisfies WorkerToPoolEvent);
      enqueue.assign({ reported: 'leaving' });
    }),
    /**
     * Its task never reached the process (`proc.unsent`): the delivery goes back to the pool
     * as declined (not an attempt, so not served), and the worker ends.
     */
    giveBack: enqueueActions(({ context, enqueue }) => {
      enqueue.emit({ type: 'worker.declined', workerId: context.workerId, deliveryId: context.deliveryId! } satisfies WorkerToPoolEvent);
      enqueue.assign({ deliveryId: null, served: context.served - 1, expectExit: false });
    }),
    /** A `task.assign` that found it busy or leaving goes straight back to the pool. */
    decline: emit(({ context, event }): WorkerToPoolEvent => ({
      type: 'worker.declined',
      workerId: context.workerId,
      deliveryId: (event as Extract<WorkerEvent, { type: 'task.assign' }>).deliveryId,
    })),
    signalTerm: sendTo('process', ({ context }): ProcessCommand =>
      context.cancelled ? { type: 'proc.terminate', cancelled: true } : { type: 'proc.terminate' },
    ),
    signalKill: sendTo('process', { type: 'proc.kill' } satisfies ProcessCommand),
  },
}).createMachine({
  id: 'worker',
  context: ({ input }) => ({
    workerId: input.workerId,
    maxTasks: input.maxTasks,
    pid: null,
    deliveryId: input.deliveryId ?? null,
    served: 0,
    last: null,
    exit: null,
    expectExit: false,
    reported: 'spawning',
    cancelled: false,
  }),
  invoke: {
    id: 'process',
    src: 'process',
    input: ({ context }) => ({ workerId: context.workerId, deliveryId: context.deliveryId }),
  },
  // Every state that can see an exit handles it itself (transient and final states cannot).
  // A pid is recorded whenever it comes: a worker may be terminating before its process has
  // reported that it started (a command reports it with `proc.ready`).
  on: {
    'proc.spawned': { actions: 'recordPid' },
    'proc.ready': { actions: 'recordPid' },
    // Wherever it is not taken (busy, leaving), an assignment is declined, never dropped.
    'task.assign': { actions: 'decline' },
  },
  initial: 'spawning',
  states: {
    spawning: {
      after: {
        spawnTimeout: {
          target: 'failed',
          actions: { type: 'report', params: { outcome: failure('spawn', 'worker did not become ready in time') } },
        },
      },
      on: {
        'task.assign': [
          { guard: 'hasTask', actions: 'decline' },
          { actions: 'takeTask' },
        ],
        'proc.ready': [
          { guard: 'hasTask', target: 'running', actions: 'recordPid' },
          { target: 'ready', actions: 'recordPid' },
        ],
        'proc.spawnError': {
          target: 'failed',
          actions: {
            type: 'report',
            params: ({ event }) => ({
              outcome: failure('spawn', `could not start worker: ${event.error.message}`, { error: event.error }),
            }),
          },
        },
        'proc.exit': {
          target: 'failed',
          actions: [
            'recordExit',
            {
              type: 'report',
              params: ({ event }) => ({
                outcome: failure('spawn', withDetail(`worker exited while starting (${describeExit(event)})`, event), {
                  exitCode: event.code,
                  signal: event.signal,
                }),
              }),
            },
          ],
        },
        'worker.retire': { target: 'terminating' },
        'worker.kill': { target: 'terminating', actions: 'dropTask' },
        'task.cancel': { guard: 'cancelsTask', target: 'terminating', actions: 'markCancelled' },
      },
    },
    ready: {
      entry: 'announceReady',
      after: {
        // Only a worker that has served goes idle; a fresh spare waits as long as it is wanted.
        idleTimeout: { guard: 'hasServed', target: 'terminating' },
      },
      on: {
        'task.assign': {
          target: 'running',
          actions: 'takeTask',
        },
        'proc.exit': [
          // A fresh spare that exits 0 before any task (a command that does not wait for its
          // stdin) could not be kept warm: no failure, and the pool stops keeping such spares.
          { guard: 'cleanExitUnused', target: 'reaped', actions: 'recordExit' },
          // Dying while idle otherwise is a crash without a task.
          {
            target: 'reaped',
            actions: ['recordExit', { type: 'report', params: ({ event }) => ({ outcome: exitOutcome(event) }) }],
          },
        ],
        'worker.retire': { target: 'terminating' },
        'worker.kill': { target: 'terminating' },
      },
    },
    running: {
      entry: ['runTask', 'startAttempt'],
      after: {
        taskTimeout: {
          target: 'failed',
          actions: [
            { type: 'report', params: { outcome: failure('timeout', 'task exceeded its timeout') } },
            'unexpectExit',
          ],
        },
      },
      on: {
        'proc.result': {
          target: 'resolved',
          actions: { type: 'report', params: ({ event }) => ({ outcome: { status: 'resolved', result: event.result } }) },
        },
        'proc.failed': {
          target: 'failed',
          actions: {
            type: 'report',
            params: ({ event }) => ({
              outcome: failure('error', describeError(event.error), { error: event.error }, !event.retryable),
            }),
          },
        },
        'proc.exit': [
          {
            guard: 'answeredResolved',
            target: 'resolved',
            actions: [
              'recordExit',
              { type: 'report', params: ({ event }) => ({ outcome: { status: 'resolved', result: (event.answer as { result: unknown }).result } }) },
            ],
          },
          {
            guard: 'answeredFailed',
            target: 'failed',
            actions: [
              'recordExit',
              {
                type: 'report',
                params: ({ event }) => {
                  const { error, retryable, kind = 'error' } = event.answer as Extract<ProcessAnswer, { status: 'failed' }>;
                  const message = kind === 'spawn' ? `could not start worker: ${describeError(error)}` : describeError(error);
                  return { outcome: failure(kind, message, { error }, !retryable) };
                },
              },
            ],
          },
          {
            target: 'failed',
            actions: ['recordExit', { type: 'report', params: ({ event }) => ({ outcome: exitOutcome(event) }) }],
          },
        ],
        'worker.kill': { target: 'terminating', actions: 'dropTask' },
        'proc.unsent': { guard: 'unsentTask', target: 'terminating', actions: 'giveBack' },
        // Never reused: a cancelled attempt leaves its process in an unknown state.
        'task.cancel': { guard: 'cancelsTask', target: 'terminating', actions: 'markCancelled' },
      },
    },
    resolved: {
      always: [{ guard: 'reusable', target: 'ready' }, { target: 'terminating' }],
    },
    failed: {
      // A failed worker is never reused: its state is unknown.
      always: 'terminating',
    },
    /* On its way out: the pool is told so (an outcome told it already). */
    terminating: {
      entry: 'announceLeaving',
      initial: 'choosing',
      on: {
        'proc.exit': [
          // A cancelled attempt ends once its process is reaped, whatever the process did.
          { guard: 'wasCancelled', target: 'reaped', actions: ['recordExit', { type: 'report', params: { outcome: CANCELLED } }] },
          { target: 'reaped', actions: 'recordExit' },
        ],
      },
      states: {
        choosing: {
          always: [
            { guard: 'exited', target: '#worker.reaped' },
            { guard: 'expectsExit', target: 'awaitingExit' },
            { target: 'signalled' },
          ],
        },
        /** The process was told its task was its last and exits by itself. */
        awaitingExit: {
          after: { killGrace: 'signalled' },
          on: { 'worker.kill': 'signalled' },
        },
        /** SIGTERM sent to the process group; SIGKILL after the grace period. */
        signalled: {
          entry: 'signalTerm',
          after: { killGrace: 'killed' },
        },
        /** SIGKILL sent to the process group; only the exit is awaited now. */
        killed: {
          entry: 'signalKill',
        },
      },
    },
    reaped: {
      type: 'final',
    },
  },
  output: ({ context }) => ({
    workerId: context.workerId,
    pid: context.pid,
    exitCode: context.exit?.code ?? null,
    signal: context.exit?.signal ?? null,
    served: context.served,
    last: context.last,
  }),
});
