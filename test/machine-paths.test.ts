import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createActor, createEmptyActor, fromPromise, SimulatedClock } from 'xstate';
import type { ActorLogic, AnyActorRef, AnyEventObject, InspectionEvent, SnapshotFrom } from 'xstate';
import { getShortestPaths } from 'xstate/graph';
import { poolMachine } from '../machines/pool.js';
import type { ForgetParams, PoolEvent, WorkerEndEvent, PoolInput, ReleaseParams, SettleParams, SpawnParams, TellParams } from '../machines/pool.js';
import { workerMachine } from '../machines/worker.js';
import type { ProcessCommand, ProcessEvent, WorkerCommand, WorkerInput } from '../machines/worker.js';
import { Coverage, enables, enumerate, pendingDelays, pureInitial, pureTransition, transitionKeysOf } from './helpers/coverage.js';
import type { PlannedAction, PureStep } from './helpers/coverage.js';
import { createFakeProcesses, deferred, recordSlots } from './helpers/fake-process.js';
import { WorkerActors } from '../src/worker-actors.js';

/*
 * Path coverage of both machines (xstate/graph `getShortestPaths`), executed.
 *
 * Traversal. Each step is computed purely with the real machines: `machine.transition` with an
 * actor scope that collects actions instead of running them and records the transitions each
 * microstep takes (helpers/coverage.ts). The worker is walked alone (its stimuli: process
 * events, pool commands, timers). The pool is walked together with its workers: a stimulus (a
 * delivery, a user command, the startup settling, the cooldown, a fake process event for one
 * worker) is played through the pool and the worker machines with XState's mailbox order, as
 * src/worker-actors.ts hosts them: the pool's `spawnWorker`/`tellWorker`/`killWorkers` slots
 * start and command worker actors inside its transition, a worker's emitted reports and then
 * its end (`worker.done`/`worker.error`) go to the pool after its step, so the pool only ever
 * receives event sequences real workers produce. Vertex keys abstract the context
 * (counts, flags, each worker's slot and state), which keeps the graph finite and small.
 *
 * Paths. The leaves of the shortest-path tree reach every vertex; for each edge whose
 * transition those paths miss, the shortest path to its source plus that edge is added.
 *
 * Execution. Every path runs against real actors: `createActor`, fake processes
 * (helpers/fake-process.ts), a SimulatedClock, real worker actors hosted by `WorkerActors`. After every
 * step the execution must sit on the path's vertex (`step.state`, same key) and match the
 * prediction replayed from the path's events exactly: value and context of the pool and every
 * worker, events the parent received, slots called, process commands, transitions taken.
 * Coverage is measured on these executions from `@xstate.microstep` inspection events.
 */

type WorkerSnapshot = SnapshotFrom<typeof workerMachine>;
type PoolSnapshot = SnapshotFrom<typeof poolMachine>;
interface SlotCall {
  name: string;
  params?: unknown;
}
type Path<TState, TEvent> = { steps: { state: TState; event: TEvent }[] };

interface SendParams {
  to: AnyActorRef;
  event: AnyEventObject;
  delay?: number;
}
/** The event XState relays to the parent when a child actor (the startup, a process) ends. */
const doneEvent = (id: string, output: unknown) => ({ type: `xstate.done.actor.${id}`, output, actorId: id });
const errorEvent = (id: string, error: unknown) => ({ type: `xstate.error.actor.${id}`, error, actorId: id });

/**
 * A worker's end, as its host (src/worker-actors.ts) tells the pool: `worker.done` with its
 * report, or `worker.error`, each with the phase it last reported and the delivery it held.
 */
const workerEnd = (snap: WorkerSnapshot): AnyEventObject => {
  const { workerId, reported: phase, deliveryId: held } = snap.context;
  return snap.status === 'done'
    ? { type: 'worker.done', workerId, report: snap.output, phase, held }
    : { type: 'worker.error', workerId, error: snap.error, phase, held };
};

/** A minimal ActorLogic around a pure transition function, for `getShortestPaths`. */
function pureLogic<TState, TEvent extends AnyEventObject>(
  initial: TState,
  transition: (state: TState, event: TEvent) => TState,
): ActorLogic<any, TEvent> {
  return {
    config: undefined,
    transition: (state: TState, event: TEvent) => transition(state, event),
    getInitialSnapshot: () => initial,
    getPersistedSnapshot: (s: unknown) => s,
  } as unknown as ActorLogic<any, TEvent>;
}

/**
 * The model's prediction for every step of `path`, replayed from its events. (A path's
 * `step.state` is only some state with the same key: getShortestPaths keeps the last state it
 * saw under each key.)
 */
function replay<TState extends { transitions: string[] }, TEvent extends AnyEventObject>(
  path: Path<TState, TEvent>,
  model: Model<TState, TEvent>,
): TState[] {
  const states = [model.initial];
  for (let i = 1; i < path.steps.length; i++) states.push(model.transition(states[i - 1], path.steps[i].event));
  return states;
}

/** Keep only the paths that are no other path's prefix (shortest paths form a tree). */
function leaves<TState, TEvent>(paths: Path<TState, TEvent>[]): Path<TState, TEvent>[] {
  const key = (p: Path<TState, TEvent>, n = p.steps.length) => JSON.stringify(p.steps.slice(1, n).map((s) => s.event));
  const prefixes = new Set(paths.filter((p) => p.steps.length > 1).map((p) => key(p, p.steps.length - 1)));
  return paths.filter((p) => !prefixes.has(key(p)));
}

/** A pure model of a system of actors, for the traversal. */
interface Model<TState extends { transitions: string[] }, TEvent extends AnyEventObject> {
  initial: TState;
  /** One stimulus, computed purely; `transitions` of the result are the keys taken. */
  transition: (state: TState, event: TEvent) => TState;
  /** What can happen next, as a function of the state. */
  events: (state: TState) => TEvent[];
  /** The vertex key: an abstraction precise enough that equal keys behave alike. */
  serializeState: (state: TState) => string;
  stopWhen?: (state: TState) => boolean;
}

interface Generated<TState, TEvent> {
  paths: Path<TState, TEvent>[];
  vertices: number;
  edges: number;
  ms: number;
}

/**
 * Paths that together reach every vertex and take every transition the traversal found:
 * `getShortestPaths` gives the shortest path to every vertex; its leaves reach them all. An
 * edge whose transition no such path takes is reached as the shortest path to its source plus
 * that edge (vertex keys do not name the transitions that led there, which keeps the graph
 * small enough to walk).
 */
function generatePaths<TState extends { transitions: string[] }, TEvent extends AnyEventObject>(
  model: Model<TState, TEvent>,
): Generated<TState, TEvent> {
  const started = performance.now();
  const edges: { from: string; event: TEvent; transitions: string[] }[] = [];
  const logic = pureLogic<TState, TEvent>(model.initial, (state, event) => {
    const next = model.transition(state, event);
    edges.push({ from: model.serializeState(state), event, transitions: next.transitions });
    return next;
  });
  const shortest = getShortestPaths(logic, {
    events: model.events,
    serializeState: model.serializeState,
    fromState: model.initial,
    stopWhen: model.stopWhen,
  }) as unknown as Path<TState, TEvent>[];
  const byKey = new Map(shortest.map((p) => [model.serializeState(p.steps[p.steps.length - 1].state), p]));
  const paths = leaves(shortest);
  const taken = new Set<string>();
  const take = (path: Path<TState, TEvent>) => {
    for (const state of replay(path, model)) for (const t of state.transitions) taken.add(t);
  };
  paths.forEach(take);
  const byLength = [...edges].sort((a, b) => (byKey.get(a.from)?.steps.length ?? 0) - (byKey.get(b.from)?.steps.length ?? 0));
  for (const edge of byLength) {
    if (edge.transitions.every((t) => taken.has(t))) continue;
    const head = byKey.get(edge.from);
    if (!head) continue;
    const last = head.steps[head.steps.length - 1].state;
    const path = { steps: [...head.steps, { state: model.transition(last, edge.event), event: edge.event }] };
    paths.push(path);
    take(path);
  }
  return { paths, vertices: shortest.length, edges: edges.length, ms: Math.round(performance.now() - started) };
}

// ---------------------------------------------------------------------------------------------
// Worker machine
// ---------------------------------------------------------------------------------------------

/** Distinct values, so a timer on the wrong delay fires at the wrong time. */
const WORKER_DELAYS = { spawnTimeout: 100, taskTimeout: 1_000, killGrace: 50, idleTimeout: 500 } as const;
/** Two tasks per worker: both branches of `reusable`, and `expectsExit` on the last task. */
const WORKER_INPUT: WorkerInput = { workerId: 'w1', maxTasks: 2 };
const PID = 4242;

type WorkerStimulus =
  /** The process sends this (the fake's `sendBack`). */
  | { type: 'proc'; event: ProcessEvent }
  /** The pool sends this to the worker. */
  | { type: 'command'; event: WorkerCommand }
  /** The simulated clock reaches the delay of a pending `after` timer. */
  | { type: 'timer'; event: AnyEventObject; ms: number };

interface WorkerState {
  snap: WorkerSnapshot;
  /** What the worker reported to the pool in this step (emitted), its end event included. */
  toParent: AnyEventObject[];
  /** Every command sent to the process so far. */
  commands: ProcessCommand[];
  processStopped: boolean;
  /** Transition keys taken in this step. */
  transitions: string[];
}

function workerModel(): Model<WorkerState, WorkerStimulus> {
  const machine = workerMachine.provide({ delays: WORKER_DELAYS });
  // A real actor ref gives the pure steps a `self` (its process child takes its system from it).
  // A worker is an actor of its own, the root of its system: it has no parent.
  const self = createActor(machine, { id: WORKER_INPUT.workerId, input: WORKER_INPUT }) as AnyActorRef;

  const apply = (state: WorkerState, step: PureStep<WorkerSnapshot>): WorkerState => {
    if (step.thrown) throw new Error(`worker transition threw: ${String(step.thrown.error)}`);
    const process = step.snapshot.children.process ?? state.snap.children.process;
    const toParent: AnyEventObject[] = [];
    const commands = [...state.commands];
    let processStopped = state.processStopped;
    for (const a of step.actions) {
      if (a.type === 'xstate.emit') {
        toParent.push((a.params as { event: AnyEventObject }).event);
      } else if (a.type === 'xstate.sendTo') {
        const p = a.params as SendParams;
        if (p.to === process) commands.push(p.event as ProcessCommand);
        else throw new Error(`worker sent ${p.event.type} to an unknown actor`);
      } else if (a.type === 'xstate.stopChild') {
        processStopped = true;
      } else if (!['xstate.raise', 'xstate.cancel', 'xstate.spawnChild'].includes(a.type)) {
        throw new Error(`unexpected worker action ${a.type}`);
      }
    }
    if (step.snapshot.status !== 'active') toParent.push(workerEnd(step.snapshot));
    return { snap: step.snapshot, toParent, commands, processStopped, transitions: step.transitions };
  };

  const init = pureInitial<WorkerSnapshot>(machine, WORKER_INPUT, self);
  return {
    initial: apply({ snap: init.snapshot, toParent: [], commands: [], processStopped: false, transitions: [] }, init),
    transition: (state, stimulus) => apply(state, pureTransition<WorkerSnapshot>(machine, state.snap, stimulus.event, self)),

    /** What a process, the pool or the clock could do in this state. */
    events: (state) => {
      const { snap } = state;
      if (snap.status !== 'active') return [];
      const c = snap.context;
      const proc: ProcessEvent[] = [
        { type: 'proc.ready' },
        { type: 'proc.result', result: `r${c.served}` },
        { type: 'proc.failed', error: { name: 'Error', message: 'handler threw' }, retryable: false },
        { type: 'proc.spawnError', error: { name: 'Error', message: 'spawn ENOENT', code: 'ENOENT' } },
        { type: 'proc.exit', code: null, signal: 'SIGSEGV' },
        { type: 'proc.exit', code: null, signal: 'SIGKILL', memory: true, detail: 'heap limit' },
        // A command's exit carries its answer.
        { type: 'proc.exit', code: 0, signal: null, answer: { status: 'resolved', result: `r${c.served}` } },
        {
          type: 'proc.exit',
          code: 3,
          signal: null,
          answer: { status: 'failed', error: { message: 'command exited with code 3' }, retryable: true },
        },
      ];
      // The driver reports the pid once, before the process is ready (a command, with it),
      // possibly after the worker was told to stop.
      if (c.pid === null && c.exit === null) {
        proc.unshift({ type: 'proc.spawned', pid: PID }, { type: 'proc.ready', pid: PID });
      }
      // The driver could not write the task it was told to run: the process was gone.
      if (c.deliveryId !== null) proc.push({ type: 'proc.unsent', deliveryId: c.deliveryId });
      // The pool retires only idle workers. It assigns to workers it believes idle, which may
      // have taken a task or be leaving by the time the assignment arrives: they decline it.
      const commands: WorkerCommand[] = [{ type: 'worker.kill' }];
      commands.unshift({ type: 'task.assign', deliveryId: c.deliveryId === null ? `d${c.served + 1}` : 'd-late' });
      if (c.deliveryId === null) commands.splice(1, 0, { type: 'worker.retire' });
      // The pool cancels the delivery the worker holds (a cancel of another is ignored).
      else commands.push({ type: 'task.cancel', deliveryId: c.deliveryId });
      const timers = pendingDelays(snap).map(({ event, delay }) => ({
        type: 'timer' as const,
        event,
        ms: WORKER_DELAYS[delay as keyof typeof WORKER_DELAYS],
      }));
      return [
        ...proc.map((event) => ({ type: 'proc' as const, event })),
        ...commands.map((event) => ({ type: 'command' as const, event })),
        ...timers,
        // Only what changes something: a guard that fails (the idle timeout of a fresh spare)
        // or an event the state ignores is no step.
      ].filter((s) => enables(snap, s.event));
    },

    // The whole snapshot is small: value and context.
    serializeState: ({ snap }) => JSON.stringify([snap.value, snap.status, snap.context]),
  };
}

/**
 * Run one worker path against a real worker machine (an actor of its own, hosted by
 * `WorkerActors` as src/ hosts it, on a fake process, with a simulated clock). After each step
 * the execution must be at the path's vertex and match the replayed prediction exactly: value,
 * context, what it reported to the pool (its end included), process
 * commands, and the transitions taken.
 */
function workerRunner(model: Model<WorkerState, WorkerStimulus>, coverage: Coverage) {
  const fakes = createFakeProcesses();
  const worker = workerMachine.provide({ actors: { process: fakes.logic }, delays: WORKER_DELAYS });

  return (path: Path<WorkerState, WorkerStimulus>) => {
    const predicted = replay(path, model);
    fakes.all.clear();
    const clock = new SimulatedClock();
    let toParent: AnyEventObject[] = [];
    let taken: string[] = [];
    const inspect = (event: InspectionEvent) => {
      coverage.observe(event);
      taken.push(...transitionKeysOf(event, workerMachine.id));
    };
    // Hosted as src/ hosts workers: an actor of its own whose reports and end go to the pool.
    const workers = new WorkerActors(worker, (event) => toParent.push(event), { clock, inspect: { next: inspect } });
    workers.spawn(WORKER_INPUT);
    const ref = workers.live.get(WORKER_INPUT.workerId)!;
    const proc = fakes.get(WORKER_INPUT.workerId);

    const check = (i: number) => {
      const snap = ref.getSnapshot() as WorkerSnapshot;
      const real: WorkerState = { snap, toParent, commands: proc.commands, processStopped: proc.stopped, transitions: taken };
      const expected = { ...predicted[i], snap: pick(predicted[i].snap) };
      if (
        isDeepStrictEqual({ ...real, snap: pick(snap) }, expected) &&
        model.serializeState(real) === model.serializeState(path.steps[i].state)
      ) {
        return;
      }
      const where = `${i === 0 ? 'initial state' : `step ${i} (${describeStimulus(path.steps[i].event)})`} of ${describePath(path)}`;
      expect(snap.value, `${where}: the path's state`).toEqual(path.steps[i].state.snap.value);
      expect({ ...real, snap: pick(snap) }, where).toEqual(expected);
      expect(model.serializeState(real), `${where}: vertex`).toBe(model.serializeState(path.steps[i].state));
    };

    check(0);
    for (let i = 1; i < path.steps.length; i++) {
      const stimulus = path.steps[i].event;
      toParent = [];
      taken = [];
      if (stimulus.type === 'proc') proc.send(stimulus.event);
      else if (stimulus.type === 'command') workers.tell(WORKER_INPUT.workerId, stimulus.event);
      else clock.increment(stimulus.ms);
      check(i);
    }
    workers.stopAll();
  };
}

/** What is compared of a machine snapshot. */
const pick = (snap: { value: unknown; status: string; context: unknown }) => ({
  value: snap.value,
  status: snap.status,
  context: snap.context,
});

// ---------------------------------------------------------------------------------------------
// Pool machine
// ---------------------------------------------------------------------------------------------

/** Deliveries in one path at most. */
const MAX_DELIVERIES = 3;
/** Driver faults (the process actor erroring) in one path at most. */
const MAX_FAULTS = 1;
/**
 * Worker timers never fire in pool paths (their effects on the pool are reached through
 * process events; the worker paths cover the timers themselves), nor does the crash window:
 * its `crash.expired` is sent as an ordinary event while a crash is counted. Only the breaker
 * cooldown runs on the simulated clock.
 */
const NEVER = 1e9;
const POOL_WORKER_DELAYS = { spawnTimeout: NEVER, taskTimeout: NEVER, killGrace: NEVER, idleTimeout: NEVER };
const POOL_DELAYS = { crashWindow: NEVER, breakerCooldown: 1_000 };
const POOL_ID = 'pool';
const STARTUP_ERROR = new Error('connection refused');
const DRIVER_FAULT = new Error('driver fault');

/**
 * The startup invoke has no explicit id; XState names it `<index>.<state node id>`. Read it
 * from the definition rather than hard-coding that scheme.
 */
const STARTUP_ID = (poolMachine.root.states.starting.invoke[0] as { id: string }).id;
const COOLDOWN_EVENT = { type: `xstate.after.breakerCooldown.${poolMachine.root.states.paused.id}` };
const IDLE_EVENT = { type: `xstate.after.idleTimeout.${workerMachine.root.states.ready.id}` };

type EnvEvent = Extract<
  PoolEvent,
  {
    type: 'delivery' | 'pause' | 'resume' | 'drain' | 'stop' | 'source.drained' | 'source.lost' | 'crash.expired' | 'breaker.quiet' | 'task.cancel';
  }
>;
type ProcAction = 'start' | 'result' | 'failed' | 'exit' | 'cleanExit' | 'spawnError';

type PoolStimulus =
  /** The source, the user or the CLI sends this to the pool. */
  | { type: 'pool'; event: EnvEvent }
  /** The startup promise settles: XState sends `xstate.done.actor.<id>` / `xstate.error.actor.<id>`. */
  | { type: 'startup'; ok: boolean }
  /** The simulated clock reaches the breaker cooldown. */
  | { type: 'cooldown' }
  /** The fake process of the pool's `worker`-th worker (in slot order) does something. */
  | { type: 'proc'; worker: number; action: ProcAction }
  /** The process actor of that worker fails (a driver bug): the worker machine ends in error. */
  | { type: 'fault'; worker: number }
  /** That worker's idle timeout fires (the one worker timer whose effect the pool sees). */
  | { type: 'idle'; worker: number };

const PROC_EVENTS: Record<ProcAction, ProcessEvent[]> = {
  start: [{ type: 'proc.spawned', pid: PID }, { type: 'proc.ready' }],
  result: [{ type: 'proc.result', result: 'ok' }],
  failed: [{ type: 'proc.failed', error: { name: 'Error', message: 'handler threw' }, retryable: true }],
  exit: [{ type: 'proc.exit', code: null, signal: 'SIGSEGV' }],
  /** Exit 0 by itself (a command that does not wait for its stdin). */
  cleanExit: [{ type: 'proc.exit', code: 0, signal: null }],
  spawnError: [{ type: 'proc.spawnError', error: { name: 'Error', message: 'spawn ENOENT', code: 'ENOENT' } }],
};

interface WorkerSim {
  self: AnyActorRef;
  snap: WorkerSnapshot;
}
interface ProcessSim {
  commands: ProcessCommand[];
  stopped: boolean;
}

interface PoolState {
  pool: PoolSnapshot;
  /** The pool's live worker actors, in spawn order, until they end (as `WorkerActors.live`). */
  workers: Record<string, WorkerSim>;
  /** Every fake process started, like `FakeProcesses.all`. */
  processes: Record<string, ProcessSim>;
  /** Steps from the initial state (the traversal's bound). */
  depth: number;
  deliveries: number;
  faults: number;
  /** The source reported a lost connection (once per path at most). */
  lost: boolean;
  /** `closeIntake` was called: only then may the source report `source.drained`. */
  closed: boolean;
  drainedSent: boolean;
  /** This step: events the pool received, slots it called, notifications it emitted, transitions it took. */
  received: AnyEventObject[];
  calls: SlotCall[];
  emitted: AnyEventObject[];
  transitions: string[];
}

interface PoolConfig {
  name: string;
  input: PoolInput;
  /** What the fake processes do in this traversal. */
  actions: ProcAction[];
  maxDepth: number;
}

function poolModel(config: PoolConfig): Model<PoolState, PoolStimulus> {
  const worker = workerMachine.provide({ delays: POOL_WORKER_DELAYS });
  const pool = poolMachine.provide({ delays: POOL_DELAYS });
  /** The pool's `self` in pure steps (its startup child takes its system from it). */
  const poolSelf = createEmptyActor() as AnyActorRef;

  /**
   * One stimulus played through the pool and its workers, purely, as src/ hosts them
   * (src/worker-actors.ts): the pool's `spawnWorker`/`tellWorker`/`killWorkers` slots run
   * inside its transition and start or command worker actors at once; a worker's reports
   * (emitted) and then its end (`worker.done`/`worker.error`) go to the pool after its step.
   * Delivery follows XState's mailboxes: an event to an idle actor is processed at once
   * (inside the sender's step), an event to a busy one waits its turn. Timers other than the
   * cooldown are not scheduled (see POOL_DELAYS).
   */
  class Run {
    pool: PoolSnapshot;
    workers: Record<string, WorkerSim>;
    processes: Record<string, ProcessSim>;
    closed: boolean;
    received: AnyEventObject[] = [];
    calls: SlotCall[] = [];
    emitted: AnyEventObject[] = [];
    transitions: string[] = [];
    private queues = new Map<string, AnyEventObject[]>();
    private busy = new Set<string>();

    constructor(state: PoolState) {
      this.pool = state.pool;
      this.workers = { ...state.workers };
      this.processes = { ...state.processes };
      this.closed = state.closed;
    }

    deliver(target: string, event: AnyEventObject): void {
      if (target === POOL_ID) this.received.push(event);
      let queue = this.queues.get(target);
      if (!queue) this.queues.set(target, (queue = []));
      queue.push(event);
      if (this.busy.has(target)) return;
      this.busy.add(target);
      while (queue.length > 0) {
        this.process(target, queue[0]);
        queue.shift();
      }
      this.busy.delete(target);
    }

    private process(target: string, event: AnyEventObject): void {
      if (target === POOL_ID) {
        if (this.pool.status !== 'active') return;
        const step = pureTransition<PoolSnapshot>(pool, this.pool, event, poolSelf);
        if (step.thrown) throw new Error(`pool transition on ${event.type} threw: ${String(step.thrown.error)}`);
        this.transitions.push(...step.transitions);
        // The slots run inside the transition; the new snapshot is the pool's once it ends.
        for (const action of step.actions) this.carryOut(POOL_ID, action);
        this.pool = step.snapshot;
        return;
      }
      const w = this.workers[target];
      // Events to an actor that ended are dropped.
      if (!w || w.snap.status !== 'active') return;
      this.step(target, pureTransition<WorkerSnapshot>(worker, w.snap, event, w.self));
    }

    /** A worker's step: its process commands, then its reports to the pool, then its end. */
    private step(id: string, step: PureStep<WorkerSnapshot>): void {
      if (step.thrown) throw new Error(`worker ${id} transition threw: ${String(step.thrown.error)}`);
      this.workers[id] = { ...this.workers[id], snap: step.snapshot };
      const reports: AnyEventObject[] = [];
      for (const action of step.actions) {
        if (action.type === 'xstate.emit') reports.push((action.params as { event: AnyEventObject }).event);
        else this.carryOut(id, action);
      }
      for (const report of reports) this.deliver(POOL_ID, report);
      if (step.snapshot.status !== 'active') {
        // Its host forgets it (commands to it are dropped from now on), then tells the pool.
        delete this.workers[id];
        this.deliver(POOL_ID, workerEnd(step.snapshot));
      }
    }

    private carryOut(from: string, action: PlannedAction): void {
      if (!action.type.startsWith('xstate.')) {
        if (from !== POOL_ID) throw new Error(`unexpected worker action ${action.type}`);
        this.calls.push(action.params === undefined ? { name: action.type } : { name: action.type, params: action.params });
        if (action.type === 'closeIntake') this.closed = true;
        if (action.type === 'spawnWorker') {
          const input = action.params as SpawnParams;
          const self = createActor(worker, { id: input.workerId, input }) as AnyActorRef;
          this.processes[input.workerId] = { commands: [], stopped: false };
          this.workers[input.workerId] = { self, snap: undefined as unknown as WorkerSnapshot };
          this.step(input.workerId, pureInitial<WorkerSnapshot>(worker, input, self));
        }
        if (action.type === 'tellWorker') {
          const { workerId, command } = action.params as TellParams;
          this.deliver(workerId, command);
        }
        if (action.type === 'killWorkers') for (const id of Object.keys(this.workers)) this.deliver(id, { type: 'worker.kill' });
        return;
      }
      switch (action.type) {
        case 'xstate.sendTo': {
          const p = action.params as SendParams;
          if (typeof p.delay === 'number') throw new Error('unexpected delayed send');
          if (from === POOL_ID) throw new Error(`the pool sent ${p.event.type} to ${p.to.id}: it commands workers through tellWorker`);
          // A worker's command to its process.
          const proc = this.processes[from];
          this.processes[from] = { ...proc, commands: [...proc.commands, p.event as ProcessCommand] };
          return;
        }
        case 'xstate.spawnChild':
          // The startup promise (settled by a stimulus) or a worker's process (its fake is
          // recorded with the worker).
          return;
        case 'xstate.stopChild': {
          const ref = action.params as AnyActorRef | undefined;
          if (from !== POOL_ID && ref) this.processes[from] = { ...this.processes[from], stopped: true };
          return;
        }
        case 'xstate.emit':
          if (from !== POOL_ID) throw new Error(`worker ${from} emitted outside its step`);
          this.emitted.push((action.params as { event: AnyEventObject }).event);
          return;
        case 'xstate.raise':
        case 'xstate.cancel':
          return; // timers: see POOL_DELAYS
        default:
          throw new Error(`unexpected action ${action.type}`);
      }
    }
  }

  /** The pool's live workers in spawn order (as its host has them until they end). */
  const workerIdAt = (state: PoolState, index: number) => Object.keys(state.workers)[index];

  return {
    initial: {
      pool: pureInitial<PoolSnapshot>(pool, config.input, poolSelf).snapshot,
      workers: {},
      processes: {},
      depth: 0,
      deliveries: 0,
      faults: 0,
      lost: false,
      closed: false,
      drainedSent: false,
      received: [],
      calls: [],
      emitted: [],
      transitions: [],
    },

    transition: (state, stimulus) => {
      const run = new Run(state);
      const next = { ...state, depth: state.depth + 1 };
      switch (stimulus.type) {
        case 'pool':
          if (stimulus.event.type === 'delivery') next.deliveries++;
          if (stimulus.event.type === 'source.drained') next.drainedSent = true;
          if (stimulus.event.type === 'source.lost') next.lost = true;
          run.deliver(POOL_ID, stimulus.event);
          break;
        case 'startup':
          run.deliver(POOL_ID, stimulus.ok ? doneEvent(STARTUP_ID, undefined) : errorEvent(STARTUP_ID, STARTUP_ERROR));
          break;
        case 'cooldown':
          run.deliver(POOL_ID, COOLDOWN_EVENT);
          break;
        case 'proc':
          for (const event of PROC_EVENTS[stimulus.action]) run.deliver(workerIdAt(state, stimulus.worker), event);
          break;
        case 'fault':
          next.faults++;
          run.deliver(workerIdAt(state, stimulus.worker), errorEvent('process', DRIVER_FAULT));
          break;
        case 'idle':
          run.deliver(workerIdAt(state, stimulus.worker), IDLE_EVENT);
          break;
      }
      const { pool: p, workers, processes, closed, received, calls, emitted, transitions } = run;
      return { ...next, pool: p, workers, processes, closed, received, calls, emitted, transitions };
    },

    events: (state) => {
      const snap = state.pool;
      if (snap.status !== 'active') return [];
      const c = snap.context;
      const out: PoolStimulus[] = [];
      const env: EnvEvent[] = [{ type: 'pause' }, { type: 'resume' }, { type: 'drain' }, { type: 'stop' }];
      // The source delivers until it has reported itself drained.
      if (state.deliveries < MAX_DELIVERIES && !state.drainedSent) {
        env.unshift({ type: 'delivery', deliveryId: `d${state.deliveries + 1}` });
      }
      // It reports drained once closed and holding nothing unsettled (a simplification:
      // retries are not modelled).
      const held = c.backlog.length + Object.values(state.workers).filter((w) => w.snap.context.deliveryId !== null).length;
      if (state.closed && !state.drainedSent && held === 0) env.push({ type: 'source.drained' });
      // The connection drops once, while the pool holds something.
      if (!state.lost && held > 0) env.push({ type: 'source.lost' });
      // Each counted crash has one pending expiry.
      if (c.crashes > 0) env.push({ type: 'crash.expired' });
      // Like the crash window, the breaker's quiet window is an ordinary event here: pending
      // once the breaker has closed after a trip.
      if (c.breaker === 'closed' && c.trips > 0) env.push({ type: 'breaker.quiet' });
      // `pool.cancel` of the first delivery in the backlog, and of the first a worker holds.
      if (c.backlog.length > 0) env.push({ type: 'task.cancel', deliveryId: c.backlog[0], workerId: null });
      const holder = Object.entries(state.workers).find(([, w]) => w.snap.status === 'active' && w.snap.context.deliveryId !== null);
      if (holder) env.push({ type: 'task.cancel', deliveryId: holder[1].snap.context.deliveryId!, workerId: holder[0] });
      for (const event of env) if (enables(snap, event)) out.push({ type: 'pool', event });
      if (snap.matches('starting')) out.push({ type: 'startup', ok: true }, { type: 'startup', ok: false });
      if (enables(snap, COOLDOWN_EVENT)) out.push({ type: 'cooldown' });
      Object.keys(state.workers).forEach((id, index) => {
        const w = state.workers[id];
        if (!w || w.snap.status !== 'active') return;
        for (const action of config.actions) {
          const events = PROC_EVENTS[action];
          if (enables(w.snap, events[events.length - 1])) out.push({ type: 'proc', worker: index, action });
        }
        if (state.faults < MAX_FAULTS) out.push({ type: 'fault', worker: index });
        if (enables(w.snap, IDLE_EVENT)) out.push({ type: 'idle', worker: index });
      });
      return out;
    },

    /**
     * The pool's context abstracted to counts and flags (its idle lists as positions among its
     * workers, which `dispatch` follows), and each worker, in spawn order, as its machine has
     * it: state, phase reported, has a delivery, tasks served.
     */
    serializeState: (state) => {
      const snap = state.pool;
      const c = snap.context;
      const order = Object.keys(state.workers);
      const workers = Object.values(state.workers).map((w) => {
        const wc = w.snap.context;
        return [w.snap.value, w.snap.status, wc.reported, wc.served, wc.deliveryId !== null, wc.expectExit, wc.cancelled];
      });
      return JSON.stringify([
        snap.value,
        snap.status,
        [c.backlog.length, c.crashes, c.pausedBy, c.sourceDrained, c.drainRequested, c.spares, c.startError !== null],
        [c.breaker, c.probe === null ? null : c.backlog.includes(c.probe), c.trips > 0, c.cooldown],
        [c.live, c.phases, c.ready.map((id) => order.indexOf(id)), c.warming.map((id) => order.indexOf(id)), c.assigned.length],
        [state.deliveries, state.faults, state.lost, state.closed, state.drainedSent],
        workers,
      ]);
    },

    stopWhen: (state) => state.depth >= config.maxDepth,
  };
}

/**
 * Run pool paths against the real pool machine, with real worker machines on fake processes,
 * a deferred startup and a simulated clock. After each step the execution must be at the
 * path's vertex and match the replayed prediction exactly: pool value and context, every
 * worker's value and context, the events the pool received, the slots it called, the commands
 * every process got, and the transitions taken.
 */
function poolRunner(config: PoolConfig, model: Model<PoolState, PoolStimulus>, coverage: Coverage, workerCoverage: Coverage) {
  const fakes = createFakeProcesses();
  const workerLogic = workerMachine.provide({ actors: { process: fakes.logic }, delays: POOL_WORKER_DELAYS });
  let calls: SlotCall[] = [];
  const record = (name: string) => (_: unknown, params?: unknown) => {
    calls.push(params === undefined ? { name } : { name, params });
  };
  let gate = deferred();

  return async (path: Path<PoolState, PoolStimulus>) => {
    const predicted = replay(path, model);
    fakes.all.clear();
    gate = deferred();
    calls = [];
    const clock = new SimulatedClock();
    let received: AnyEventObject[] = [];
    let taken: string[] = [];
    let poolRef: AnyActorRef | undefined;
    const inspect = (event: InspectionEvent) => {
      coverage.observe(event);
      workerCoverage.observe(event);
      taken.push(...transitionKeysOf(event, poolMachine.id));
      if (event.type === '@xstate.event' && poolRef && event.actorRef === poolRef) received.push(event.event);
    };
    // The workers as src/ hosts them: actors of their own (each the root of its own system,
    // observed by the same inspector), reporting to the pool.
    const workers = new WorkerActors(workerLogic, (event) => actor.send(event), { clock, inspect: { next: inspect } });
    const machine = poolMachine.provide({
      actors: { startup: fromPromise(() => gate.promise) },
      actions: {
        ...recordSlots(record),
        spawnWorker: (_: unknown, params: unknown) => {
          record('spawnWorker')(_, params);
          workers.spawn(params as SpawnParams);
        },
        tellWorker: (_: unknown, params: unknown) => {
          record('tellWorker')(_, params);
          const { workerId, command } = params as TellParams;
          workers.tell(workerId, command);
        },
        killWorkers: () => {
          record('killWorkers')(undefined);
          workers.killAll();
        },
      },
      delays: POOL_DELAYS,
    });
    const actor = createActor(machine, { clock, input: config.input, inspect });
    let emitted: AnyEventObject[] = [];
    actor.on('*', (event) => emitted.push(event));
    poolRef = actor;
    actor.start();
    received = [];
    const counters = { depth: 0, deliveries: 0, faults: 0, lost: false, closed: false, drainedSent: false };

    const check = (i: number) => {
      const snap = actor.getSnapshot();
      counters.closed ||= calls.some((c) => c.name === 'closeIntake');
      const real: PoolState = {
        ...counters,
        depth: i,
        pool: snap,
        workers: Object.fromEntries([...workers.live].map(([id, self]) => [id, { self, snap: self.getSnapshot() as WorkerSnapshot }])),
        processes: Object.fromEntries([...fakes.all].map(([id, p]) => [id, { commands: p.commands, stopped: p.stopped }])),
        received,
        calls,
        emitted,
        transitions: taken,
      };
      const observed = comparable(real);
      const expected = comparable(predicted[i]);
      if (isDeepStrictEqual(observed, expected) && model.serializeState(real) === model.serializeState(path.steps[i].state)) {
        return;
      }
      const where = `${i === 0 ? 'initial state' : `step ${i} (${describeStimulus(path.steps[i].event)})`} of ${describePath(path)}`;
      expect(snap.value, `${where}: the path's state`).toEqual(path.steps[i].state.pool.value);
      expect(observed, where).toEqual(expected);
      expect(model.serializeState(real), `${where}: vertex`).toBe(model.serializeState(path.steps[i].state));
    };

    check(0);
    for (let i = 1; i < path.steps.length; i++) {
      const stimulus = path.steps[i].event;
      received = [];
      calls = [];
      emitted = [];
      taken = [];
      const workerId = 'worker' in stimulus ? [...workers.live.keys()][stimulus.worker] : '';
      switch (stimulus.type) {
        case 'pool':
          if (stimulus.event.type === 'delivery') counters.deliveries++;
          if (stimulus.event.type === 'source.drained') counters.drainedSent = true;
          if (stimulus.event.type === 'source.lost') counters.lost = true;
          actor.send(stimulus.event);
          break;
        case 'startup':
          if (stimulus.ok) gate.resolve();
          else gate.reject(STARTUP_ERROR);
          // The promise actor reports on a later microtask.
          await new Promise((r) => setImmediate(r));
          break;
        case 'cooldown':
          clock.increment(POOL_DELAYS.breakerCooldown);
          break;
        case 'proc': {
          const proc = fakes.get(workerId);
          if (stimulus.action === 'start') proc.start(PID);
          else for (const event of PROC_EVENTS[stimulus.action]) proc.send(event);
          break;
        }
        case 'fault':
          counters.faults++;
          (workers.live.get(workerId) as AnyActorRef).send(errorEvent('process', DRIVER_FAULT));
          break;
        case 'idle':
          // As the worker's own timer would deliver it (worker timers never fire in pool paths).
          (workers.live.get(workerId) as AnyActorRef).send(IDLE_EVENT);
          break;
      }
      check(i);
    }
    actor.stop();
    workers.stopAll();
  };
}

/** What is compared of a pool state: everything but actor refs and the traversal's bookkeeping. */
const comparable = (s: PoolState) => ({
  pool: pick(s.pool),
  workers: Object.fromEntries(Object.entries(s.workers).map(([id, w]) => [id, pick(w.snap)])),
  processes: s.processes,
  deliveries: s.deliveries,
  faults: s.faults,
  lost: s.lost,
  closed: s.closed,
  drainedSent: s.drainedSent,
  received: s.received,
  calls: s.calls,
  emitted: s.emitted,
  transitions: s.transitions,
});


// ---------------------------------------------------------------------------------------------
// Lifecycle rules, stated without the machines
// ---------------------------------------------------------------------------------------------

/**
 * The rules every path of the pool (run to its end) must keep, stated from outside the
 * machines: from the stimuli given, the events the pool received, the slots it called and the
 * commands the processes got. They do not look at the machines' states or contexts.
 *
 * - live workers never exceed maxWorkers;
 * - a worker is reaped at most once, and only after its process exited (or its process actor
 *   failed);
 * - a delivery is run at most once, only while the pool holds it, and never by a process
 *   already signalled;
 * - a delivery is settled or given back at most once (a delivery the source voided by losing
 *   its connection may still be settled: the source drops it), settled `resolved` only after
 *   the process that ran it sent a result;
 * - a path run to its end (stop, then every process exits) reaches `stopped`, with every
 *   worker it spawned reaped exactly once, no live child, every process actor stopped, and
 *   every delivery settled or given back exactly once (void ones at most once).
 */
function poolPathViolations(config: PoolConfig, path: Path<PoolState, PoolStimulus>, states: PoolState[]): string[] {
  const out: string[] = [];
  const spawned = new Set<string>();
  const reaped = new Map<string, number>();
  const ended = new Set<string>();
  const delivered = new Set<string>();
  const voided = new Set<string>();
  const finished = new Map<string, number>();
  const runs = new Map<string, string>();
  const signalled = new Set<string>();
  /** Per worker: the delivery it last told its process to run; deliveries whose process then sent a result. */
  const lastRun = new Map<string, string>();
  const answered = new Set<string>();
  const seen = new Map<string, number>();
  const isFinished = (id: string) => (finished.get(id) ?? 0) > 0;
  const held = () => [...delivered].filter((id) => !isFinished(id));
  const finish = (id: string, how: string, step: number) => {
    if (!delivered.has(id)) out.push(`step ${step}: ${how} ${id}, never delivered`);
    if (isFinished(id)) out.push(`step ${step}: ${how} ${id}, already settled or given back`);
    finished.set(id, (finished.get(id) ?? 0) + 1);
  };
  for (let i = 0; i < states.length; i++) {
    const state = states[i];
    const stimulus = i === 0 ? null : path.steps[i].event;
    const ids = Object.keys(state.workers);
    if (ids.length > config.input.maxWorkers) out.push(`step ${i}: ${ids.length} live workers > maxWorkers`);
    // What the stimulus did to a process.
    if (stimulus?.type === 'pool' && stimulus.event.type === 'delivery') delivered.add(stimulus.event.deliveryId);
    if (stimulus?.type === 'pool' && stimulus.event.type === 'source.lost') for (const id of held()) voided.add(id);
    const target = stimulus && 'worker' in stimulus ? Object.keys(states[i - 1].workers)[stimulus.worker] : null;
    if (target !== null && stimulus?.type === 'fault') ended.add(target);
    if (target !== null && stimulus?.type === 'proc') {
      if (stimulus.action === 'exit' || stimulus.action === 'cleanExit') ended.add(target);
      const last = lastRun.get(target);
      if (stimulus.action === 'result' && last !== undefined) answered.add(last);
    }
    // What the processes were told.
    for (const [id, proc] of Object.entries(state.processes)) {
      spawned.add(id);
      for (const command of proc.commands.slice(seen.get(id) ?? 0)) {
        if (command.type !== 'proc.run') {
          signalled.add(id);
          continue;
        }
        const d = command.deliveryId;
        if (signalled.has(id)) out.push(`step ${i}: ${id} told to run ${d} after a signal`);
        if (!delivered.has(d) || isFinished(d)) out.push(`step ${i}: ${id} told to run ${d}, which the pool does not hold`);
        if (runs.has(d)) out.push(`step ${i}: ${d} run twice (${runs.get(d)}, ${id})`);
        runs.set(d, id);
        lastRun.set(id, d);
      }
      seen.set(id, proc.commands.length);
    }
    // What the pool learnt and did.
    for (const event of state.received) {
      if (event.type !== 'worker.done' && event.type !== 'worker.error') continue;
      const id = (event as WorkerEndEvent).workerId;
      reaped.set(id, (reaped.get(id) ?? 0) + 1);
      if (reaped.get(id)! > 1) out.push(`step ${i}: ${id} reaped twice`);
      if (!ended.has(id)) out.push(`step ${i}: ${id} reaped before its process exited`);
    }
    for (const call of state.calls) {
      if (call.name === 'settle') {
        const { deliveryId, outcome } = call.params as SettleParams;
        if (!voided.has(deliveryId) || isFinished(deliveryId)) finish(deliveryId, 'settled', i);
        else finished.set(deliveryId, 1);
        if (outcome.status === 'resolved') {
          if (!answered.has(deliveryId)) {
            out.push(`step ${i}: ${deliveryId} settled resolved, but no process that ran it sent a result`);
          }
        }
      } else if (call.name === 'release') {
        const { deliveryIds } = call.params as ReleaseParams;
        for (const id of deliveryIds === 'all' ? held() : deliveryIds) finish(id, 'given back', i);
      } else if (call.name === 'forget') {
        for (const id of (call.params as ForgetParams).deliveryIds) finish(id, 'forgotten', i);
      }
    }
  }
  const end = states[states.length - 1];
  if (end.pool.status !== 'done' || end.pool.value !== 'stopped') {
    out.push(`run to its end, the pool is ${JSON.stringify(end.pool.value)} (${end.pool.status}), not stopped`);
  }
  if (Object.keys(end.workers).length > 0) out.push(`stopped with live workers: ${Object.keys(end.workers).join(', ')}`);
  for (const id of spawned) {
    if ((reaped.get(id) ?? 0) !== 1) out.push(`${id} reaped ${reaped.get(id) ?? 0} times`);
    if (!end.processes[id].stopped) out.push(`${id}'s process actor still running after the pool stopped`);
  }
  for (const id of delivered) {
    const n = finished.get(id) ?? 0;
    if (voided.has(id) ? n > 1 : n !== 1) out.push(`${voided.has(id) ? 'void ' : ''}delivery ${id} settled or given back ${n} times`);
  }
  return out;
}

/** `path` run to its end: the pool is told to stop, then the process of every live worker exits. */
function runToEnd(model: Model<PoolState, PoolStimulus>, path: Path<PoolState, PoolStimulus>): Path<PoolState, PoolStimulus> {
  const steps = [...path.steps];
  const push = (event: PoolStimulus) => steps.push({ state: model.transition(steps[steps.length - 1].state, event), event });
  if (steps[steps.length - 1].state.pool.status === 'active') push({ type: 'pool', event: { type: 'stop' } });
  for (let i = 0; i < 10 && Object.keys(steps[steps.length - 1].state.workers).length > 0; i++) push({ type: 'proc', worker: 0, action: 'exit' });
  return { steps };
}

/**
 * The rules every worker path must keep, from the events it sent its parent and the commands
 * its process got: it reports at most one outcome per task; every phase report leaves the
 * phase the previous one entered (the first leaves `spawning`); its process is never told to
 * run after a signal; it ends (once) only after its process exited; and when it ends, every
 * task it ran has its outcome unless it was killed while running it.
 */
function workerPathViolations(path: Path<WorkerState, WorkerStimulus>, states: WorkerState[]): string[] {
  const out: string[] = [];
  const ENTERS: Record<string, string | null> = {
    'worker.ready': 'ready',
    'worker.running': 'running',
    'worker.leaving': 'leaving',
    'worker.declined': null,
  };
  let phase = 'spawning';
  let exited = false;
  let done = 0;
  let signalled = false;
  let killedWhileRunning = false;
  const ran: string[] = [];
  /** Deliveries it declined after it was told to run them (its process never read them). */
  const givenBack = new Set<string>();
  const outcomes = new Map<string, number>();
  let seenCommands = 0;
  for (let i = 0; i < states.length; i++) {
    const state = states[i];
    const stimulus = i === 0 ? null : path.steps[i].event;
    if (stimulus?.type === 'proc' && stimulus.event.type === 'proc.exit') exited = true;
    if (stimulus?.type === 'command' && stimulus.event.type === 'worker.kill' && ran.length > outcomes.size) killedWhileRunning = true;
    for (const command of state.commands.slice(seenCommands)) {
      if (command.type === 'proc.run') {
        if (signalled) out.push(`step ${i}: told to run ${command.deliveryId} after a signal`);
        ran.push(command.deliveryId);
      } else signalled = true;
    }
    seenCommands = state.commands.length;
    for (const event of state.toParent) {
      if (event.type === 'worker.done' || event.type === 'worker.error') {
        done++;
        if (done > 1) out.push(`step ${i}: ended twice`);
        if (!exited && event.type === 'worker.done') out.push(`step ${i}: ended before its process exited`);
        // The end names the phase the reports left it in, and holds no delivery it reported on.
        if (event.phase !== phase) out.push(`step ${i}: ended in phase ${event.phase}, last reported ${phase}`);
        if (event.held !== null && outcomes.has(event.held)) out.push(`step ${i}: ended holding ${event.held}, whose outcome it reported`);
        continue;
      }
      // An outcome names the phase it enters: `ready` for a reused worker that goes on.
      const to = event.type === 'worker.outcome' ? (event as unknown as { to: string }).to : ENTERS[event.type];
      if (to === undefined) {
        out.push(`step ${i}: unknown event ${event.type} to the pool`);
        continue;
      }
      if (to === null) {
        const declined = (event as unknown as { deliveryId: string }).deliveryId;
        if (ran.includes(declined)) givenBack.add(declined);
        continue;
      }
      if ((event as { from?: string }).from !== phase) out.push(`step ${i}: ${event.type} from ${(event as { from?: string }).from}, last reported ${phase}`);
      phase = to;
      if (event.type === 'worker.outcome') {
        const id = (event as unknown as { deliveryId: string | null }).deliveryId;
        if (id === null) continue;
        outcomes.set(id, (outcomes.get(id) ?? 0) + 1);
        if (outcomes.get(id)! > 1) out.push(`step ${i}: a second outcome for ${id}`);
        // A failure to start, or a cancel that came first, reports on a task never run.
        const kind = (event as unknown as { outcome: { kind?: string } }).outcome.kind;
        if (!ran.includes(id) && kind !== 'spawn' && kind !== 'cancelled') {
          out.push(`step ${i}: an outcome for ${id}, which its process was never told to run`);
        }
      }
    }
  }
  if (done === 1 && !killedWhileRunning) {
    for (const id of ran) {
      // A task its process never read goes back declined: no outcome, and none expected.
      if (givenBack.has(id)) {
        if (outcomes.has(id)) out.push(`an outcome for ${id}, which it gave back`);
        continue;
      }
      if ((outcomes.get(id) ?? 0) !== 1) out.push(`ended with ${outcomes.get(id) ?? 0} outcomes for ${id}, which it ran`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

function describeStimulus(s: WorkerStimulus | PoolStimulus): string {
  switch (s.type) {
    case 'proc':
      return 'worker' in s ? `worker#${s.worker} ${s.action}` : s.event.type;
    case 'command':
    case 'timer':
      return s.event.type;
    case 'pool':
      return s.event.type === 'delivery' ? `delivery ${s.event.deliveryId}` : s.event.type;
    case 'startup':
      return s.ok ? 'startup done' : 'startup error';
    case 'cooldown':
      return 'breaker cooldown';
    case 'fault':
      return `worker#${s.worker} process actor error`;
    case 'idle':
      return `worker#${s.worker} idle timeout`;
  }
}

function describePath(path: Path<unknown, WorkerStimulus | PoolStimulus>): string {
  return `[${path.steps
    .slice(1)
    .map((s) => describeStimulus(s.event))
    .join(' → ')}]`;
}

const report = (coverage: Coverage, name: string) => {
  const line = coverage.summary(name);
  console.log(line);
  return line;
};

const summary = (name: string, g: Generated<unknown, AnyEventObject>, ms: number) =>
  `${name}: ${g.vertices} vertices, ${g.edges} edges in ${g.ms} ms; ${g.paths.length} paths ` +
  `(${g.paths.reduce((n, p) => n + p.steps.length - 1, 0)} steps) executed in ${ms} ms`;

/**
 * Transitions no generated path can take, and why. The suite fails if any other transition is
 * left uncovered, and also if one of these becomes covered (so the list stays true).
 */
const UNREACHABLE: Record<string, string> = {
  // (`pool.stopping on worker.outcome` was listed here until a cancelled worker, which reports
  // its outcome once its process exits, could be stopped on its way out: it is reached now.)
  // A worker declines an assignment that reaches it after it stopped being idle: the pool's
  // view lags only while a report waits in its mailbox. Reports are queued there only when a
  // worker acts inside the pool's own transition (its spawnWorker, tellWorker and killWorkers
  // slots run the worker actors at once), and the pool has already taken every worker it
  // commands out of its idle lists. A stale idle worker needs a process that fails
  // synchronously at start without exiting (inside spawnWorker) and a delivery sent to the pool
  // from inside its own transition (a re-entrant slot, such as a source that delivers from
  // resumeIntake). The fake processes answer only between stimuli; an assignment to a worker
  // that has already ended is dropped by its host and comes back through `reclaim`, not as a
  // decline. The worker paths cover declining.
  'pool on worker.declined[0]': 'needs a re-entrant delivery and a synchronous spawn failure',
  'pool.running on worker.declined[0]': 'needs a re-entrant delivery and a synchronous spawn failure',
  'pool.draining on worker.declined[0]': 'needs a re-entrant delivery and a synchronous spawn failure',
  'pool.stopping on worker.declined[0]': 'needs a re-entrant delivery and a synchronous spawn failure',
  // Kept so that no idle worker can hold a drain open: but entering `draining` retires every
  // ready worker and every spare still starting, workers spawned from then on start with a
  // task, and a reused worker says it is ready again in its outcome (`to: ready`), which
  // draining retires. Nothing is left to report `worker.ready` on its own.
  'pool.draining on worker.ready[0]': 'every worker that could report ready is retired on entry, or reports it with its outcome',
};

function expectCoverage(coverage: Coverage, name: string) {
  report(coverage, name);
  const uncovered = coverage.uncoveredTransitions();
  if (uncovered.length > 0) console.log(`${name}: not covered:\n  ${coverage.uncoveredLabels().join('\n  ')}`);
  expect(coverage.uncoveredStates(), `${name}: states never entered`).toEqual([]);
  expect(uncovered, `${name}: transitions never taken`).toEqual(
    [...coverage.definition.transitions.keys()].filter((key) => key in UNREACHABLE),
  );
}

describe('worker machine: path coverage', () => {
  const coverage = new Coverage(enumerate(workerMachine));

  it('every generated path, executed, behaves as the traversal predicts', () => {
    const model = workerModel();
    const generated = generatePaths(model);
    const started = performance.now();
    const run = workerRunner(model, coverage);
    const violations: string[] = [];
    for (const path of generated.paths) {
      run(path);
      for (const v of workerPathViolations(path, replay(path, model))) violations.push(`${describePath(path)}: ${v}`);
    }
    expect(violations.slice(0, 10), `${violations.length} lifecycle violations`).toEqual([]);
    console.log(summary('worker paths', generated, Math.round(performance.now() - started)));
  }, 120_000);

  it('covers every state, and every transition but the unreachable ones, on execution', () => {
    expectCoverage(coverage, 'worker machine');
  });

  // Found by this suite: a root `proc.exit` handler shadowed in every state (dead code), removed.
  it('covers every transition', () => {
    expect(coverage.uncoveredTransitions()).toEqual([]);
  });
});

const POOL_CONFIGS: PoolConfig[] = [
  {
    // The spare takes the only slot: assignment to a starting spare, reuse, and a breaker
    // that trips on the first crash (both branches of breakerTrips, crash.expired).
    name: 'one worker, a spare, two tasks each',
    input: { maxWorkers: 1, maxSpawning: 1, spares: 1, maxTasksPerWorker: 2, maxCrashes: 0 },
    actions: ['start', 'result', 'exit'],
    maxDepth: 6,
  },
  {
    // Two single-use workers and a backlog: dispatch across workers, spawn failures; one
    // worker starting at a time (the second delivery waits for the first worker to start).
    name: 'two single-use workers',
    input: { maxWorkers: 2, maxSpawning: 1, spares: 0, maxTasksPerWorker: 1, maxCrashes: 1 },
    actions: ['start', 'result', 'failed', 'exit', 'spawnError'],
    maxDepth: 5,
  },
  {
    // A spare whose process exits 0 before any task: the pool keeps no spares from then on.
    name: 'a spare that exits cleanly',
    input: { maxWorkers: 1, maxSpawning: 1, spares: 1, maxTasksPerWorker: 1, maxCrashes: 1 },
    actions: ['start', 'result', 'cleanExit'],
    maxDepth: 5,
  },
];

describe('pool machine: path coverage', () => {
  const coverage = new Coverage(enumerate(poolMachine));
  const workerCoverage = new Coverage(enumerate(workerMachine));

  for (const config of POOL_CONFIGS) {
    it(`every generated path, executed, behaves as the traversal predicts (${config.name})`, async () => {
      const model = poolModel(config);
      const generated = generatePaths(model);
      const started = performance.now();
      const run = poolRunner(config, model, coverage, workerCoverage);
      const violations: string[] = [];
      for (const generatedPath of generated.paths) {
        // Every path is executed run to its end, and checked against the lifecycle rules.
        const path = runToEnd(model, generatedPath);
        await run(path);
        for (const v of poolPathViolations(config, path, replay(path, model))) violations.push(`${describePath(path)}: ${v}`);
      }
      expect(violations.slice(0, 10), `${violations.length} lifecycle violations`).toEqual([]);
      console.log(summary(`pool paths (${config.name})`, generated, Math.round(performance.now() - started)));
      // Plain CPU work (~2-15 s alone): the limit only catches a hang, with room for two CPU
      // burners and the other suites beside it (30 s was passed under that load).
    }, 240_000);
  }

  it('covers every state, and every transition but the unreachable ones, on execution', () => {
    report(workerCoverage, 'worker machine (inside pool paths)');
    expectCoverage(coverage, 'pool machine');
  });
});

describe('pool machine: lifecycle rules', () => {
  const config = POOL_CONFIGS[1];
  const model = poolModel(config);
  const pathOf = (stimuli: PoolStimulus[]): Path<PoolState, PoolStimulus> => {
    const steps: Path<PoolState, PoolStimulus>['steps'] = [{ state: model.initial, event: { type: 'cooldown' } }];
    for (const event of stimuli) steps.push({ state: model.transition(steps[steps.length - 1].state, event), event });
    return { steps };
  };
  const violationsOf = (path: Path<PoolState, PoolStimulus>) => poolPathViolations(config, path, replay(path, model));

  // The rules can fail: the same path, not run to its end, leaves a worker unreaped.
  it('are broken by a path that spawns a worker and does not run to its end', () => {
    const started: PoolStimulus[] = [{ type: 'startup', ok: true }, { type: 'pool', event: { type: 'delivery', deliveryId: 'd1' } }];
    expect(violationsOf(runToEnd(model, pathOf(started)))).toEqual([]);
    expect(violationsOf(pathOf(started))).toEqual(
      expect.arrayContaining(['worker.1 reaped 0 times', 'stopped with live workers: worker.1', 'delivery d1 settled or given back 0 times']),
    );
  });

  /*
   * Found by this suite (machines/pool.ts, `starting.onError`), fixed since, kept as a
   * regression: a startup that failed after the source delivered (a broker that consumed
   * before a later step of open() failed) went to `stopped` with the deliveries still in the
   * backlog, neither settled nor released. Minimal sequence: `delivery d1`, then the startup
   * rejects.
   */
  it('a startup that fails gives back the deliveries received while starting', () => {
    const path = runToEnd(model, pathOf([{ type: 'pool', event: { type: 'delivery', deliveryId: 'd1' } }, { type: 'startup', ok: false }]));
    expect(violationsOf(path)).toEqual([]);
  });
});

describe('pool machine: found while covering the error transitions (regression)', () => {
  // `worker.error` (formerly `xstate.error.actor.worker.*`: a worker machine ended in error: here its process actor
  // threw at start) used to only reap and dispatch, not count as a crash: a driver that fails
  // at every start made the pool respawn in one synchronous loop that never yielded (the fake
  // recovers after 100 starts so that this test ends).
  it('a worker whose process actor fails to start counts toward the crash breaker', async () => {
    let starts = 0;
    const fakes = createFakeProcesses({ throwOnStart: () => ++starts <= 100 });
    const clock = new SimulatedClock();
    const workers = new WorkerActors(workerMachine.provide({ actors: { process: fakes.logic } }), (event) => actor.send(event), { clock });
    const machine = poolMachine.provide({
      actors: { startup: fromPromise(async () => {}) },
      actions: {
        spawnWorker: (_: unknown, params: unknown) => workers.spawn(params as SpawnParams),
        tellWorker: (_: unknown, params: unknown) => workers.tell((params as TellParams).workerId, (params as TellParams).command),
        killWorkers: () => workers.killAll(),
      },
    });
    const input: PoolInput = { maxWorkers: 1, maxSpawning: 1, spares: 1, maxTasksPerWorker: 1, maxCrashes: 2 };
    const actor = createActor(machine, { input, clock }).start();
    await new Promise((r) => setImmediate(r));
    const { value, context } = actor.getSnapshot();
    actor.stop();
    workers.stopAll();
    expect({ starts, value }).toEqual({ starts: input.maxCrashes + 1, value: 'paused' });
    expect(context.crashes).toBe(input.maxCrashes + 1);
  });
});
