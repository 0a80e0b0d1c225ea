import { afterEach, describe, expect, it } from 'vitest';
import { createActor, fromPromise, SimulatedClock, waitFor } from 'xstate';
import { poolMachine } from '../machines/pool.js';
import type { ForgetParams, PoolEmitted, PoolInput, ReleaseParams, SettleParams, SpawnParams, TellParams } from '../machines/pool.js';
import { WorkerActors } from '../src/worker-actors.js';
import type { WorkerReport } from '../machines/types.js';
import { workerMachine } from '../machines/worker.js';
import type { WorkerContext } from '../machines/worker.js';
import { createFakeProcesses, deferred, recordSlots } from './helpers/fake-process.js';
import type { FakeOptions, FakeProcess } from './helpers/fake-process.js';

const WORKER_DELAYS = { spawnTimeout: 100, taskTimeout: 1_000, killGrace: 50, idleTimeout: 500 } as const;
const POOL_DELAYS = { crashWindow: 10_000, breakerCooldown: 2_000, breakerMaxCooldown: 7_000 } as const;

interface Harness {
  violations: string[];
  /** Checks that hold once every event has been processed (the end of a test). */
  settledChecks(): void;
}
/** The pool of the running test, for the invariant check after it. */
let current: Harness | null = null;

afterEach(() => {
  current?.settledChecks();
  const violations = current?.violations ?? [];
  current = null;
  expect(violations.join("\n"), "invariant violated during the test").toBe("");
});

interface StartOptions {
  startup?: () => Promise<void>;
  fake?: FakeOptions;
  /** Do not wait for `starting` to end. */
  noWait?: boolean;
}

/** A worker as its own machine has it: its state and the delivery it holds. */
interface WorkerView {
  state: string;
  deliveryId: string | null;
}

/**
 * The pool machine with fake worker processes, recorded slots and notifications, and a
 * simulated clock. The `release`/`forget` slots are played as src/ plays them: the harness
 * holds every delivery given and not yet settled, released or forgotten. After every
 * snapshot it checks that live workers never exceed maxWorkers, and that the pool's counts
 * agree with its worker actors: `live` is their number, each phase count is the number of
 * children that last reported that phase, and every idle id is a child.
 */
async function startPool(partial: Partial<PoolInput> = {}, options: StartOptions = {}) {
  const input: PoolInput = {
    maxWorkers: 2,
    spares: 0,
    maxTasksPerWorker: 1,
    maxCrashes: 2,
    maxSpawning: 100,
    breakerCooldown: POOL_DELAYS.breakerCooldown,
    breakerMaxCooldown: POOL_DELAYS.breakerMaxCooldown,
    ...partial,
  };
  const fakes = createFakeProcesses(options.fake);
  /** Every slot call and notification, in order. */
  const calls: { name: string; params?: unknown }[] = [];
  /** Deliveries the pool holds, as src/ keeps them: delivered, not settled, released or forgotten. */
  const held = new Set<string>();
  const released: string[] = [];
  const record = (name: string) => (_: unknown, params?: unknown) => {
    calls.push(params === undefined ? { name } : { name, params });
    if (name === 'settle') held.delete((params as SettleParams).deliveryId);
    if (name === 'release') {
      const { deliveryIds } = params as ReleaseParams;
      for (const id of deliveryIds === 'all' ? [...held] : deliveryIds) {
        if (held.delete(id) || deliveryIds !== 'all') released.push(id);
      }
    }
    if (name === 'forget') for (const id of (params as ForgetParams).deliveryIds) held.delete(id);
    // As a source does: what the pool gave back by id (its backlog, when it pauses) is
    // delivered again, in its order, once intake resumes.
    if (name === 'release' && (params as ReleaseParams).deliveryIds !== 'all') {
      for (const id of (params as ReleaseParams).deliveryIds as string[]) waiting.unshift(id);
    }
    if (name === 'resumeIntake') {
      for (const deliveryId of waiting.splice(0)) {
        held.add(deliveryId);
        pool.send({ type: 'delivery', deliveryId });
      }
    }
  };
  /** Deliveries given back while paused, to deliver again on resume (front first). */
  const waiting: string[] = [];
  const clock = new SimulatedClock();
  // The workers as src/ hosts them: actors of their own, reporting to the pool.
  const workers = new WorkerActors(
    workerMachine.provide({ actors: { process: fakes.logic }, delays: WORKER_DELAYS }),
    (event) => {
      if (event.type === 'worker.done' || event.type === 'worker.error') ended.add(event.workerId);
      pool.send(event);
    },
    { clock },
  );
  /** Workers whose end was sent to the pool (it may still be on its way). */
  const ended = new Set<string>();
  const machine = poolMachine.provide({
    actors: { startup: fromPromise(options.startup ?? (async () => {})) },
    actions: {
      ...recordSlots(record),
      spawnWorker: (_: unknown, params: unknown) => workers.spawn(params as SpawnParams),
      tellWorker: (_: unknown, params: unknown) => workers.tell((params as TellParams).workerId, (params as TellParams).command),
      killWorkers: () => workers.killAll(),
    },
    delays: { crashWindow: POOL_DELAYS.crashWindow },
  });
  const pool = createActor(machine, { clock, input });
  pool.on('*', (emitted: PoolEmitted) => {
    if (emitted.type === 'worker.reaped') calls.push({ name: 'reaped', params: { report: emitted.report } });
    if (emitted.type === 'breaker.tripped') {
      const { crashes, trips, cooldownMs } = emitted;
      calls.push({ name: 'breakerTripped', params: { crashes, trips, cooldownMs } });
    }
    if (emitted.type === 'breaker.half-open' || emitted.type === 'breaker.closed') calls.push({ name: emitted.type });
  });
  const workerContexts = () =>
    [...workers.live].map(([id, actor]) => [id, actor.getSnapshot().context as WorkerContext] as const);
  const harness: Harness = {
    violations: [],
    // A worker's report reaches the pool after the worker has moved: phase by phase, the
    // counts agree with the children once nothing is in flight.
    settledChecks: () => {
      const s = pool.getSnapshot();
      if (s.status !== 'active') return;
      const children = workerContexts();
      if (s.context.live !== children.length) harness.violations.push(`live ${s.context.live} != ${children.length} worker actors`);
      for (const phase of ['spawning', 'ready', 'running', 'leaving'] as const) {
        const reported = children.filter(([, w]) => w.reported === phase).length;
        if (s.context.phases[phase] !== reported) harness.violations.push(`phases.${phase} ${s.context.phases[phase]} != ${reported} children reporting it`);
      }
    },
  };
  current = harness;
  let maxLive = 0;
  pool.subscribe({
    next: (s) => {
      const children = workerContexts();
      const c = s.context;
      maxLive = Math.max(maxLive, c.live, children.length);
      if (children.length > input.maxWorkers) harness.violations.push(`${children.length} worker actors > maxWorkers`);
      // A worker leaves the map at its end, before the pool hears of it: never more than live.
      if (children.length > c.live) harness.violations.push(`${children.length} worker actors > live ${c.live}`);
      if (c.live > input.maxWorkers) harness.violations.push(`live ${c.live} > maxWorkers`);
      const total = c.phases.spawning + c.phases.ready + c.phases.running + c.phases.leaving;
      if (total !== c.live) harness.violations.push(`phases add up to ${total}, live is ${c.live}`);
      const ids = new Set(children.map(([id]) => id));
      for (const id of [...c.ready, ...c.warming]) if (!ids.has(id) && !ended.has(id)) harness.violations.push(`idle ${id} is no worker`);
    },
    error: (err) => harness.violations.push(`pool errored: ${String(err)}`),
  });
  pool.start();
  if (!options.noWait) await waitFor(pool, (s) => !s.matches('starting'));

  const callsOf = (name: string) => calls.filter((c) => c.name === name);
  return {
    pool,
    clock,
    fakes,
    calls,
    input,
    maxLive: () => maxLive,
    snapshot: () => pool.getSnapshot(),
    context: () => pool.getSnapshot().context,
    state: () => pool.getSnapshot().value,
    deliver: (...ids: string[]) =>
      ids.forEach((deliveryId) => {
        held.add(deliveryId);
        pool.send({ type: 'delivery', deliveryId });
      }),
    proc: (workerId: string): FakeProcess => fakes.get(workerId),
    count: (name: string) => callsOf(name).length,
    settled: () => callsOf('settle').map((c) => c.params as SettleParams),
    settledIds: () => callsOf('settle').map((c) => (c.params as SettleParams).deliveryId),
    /** Every delivery id given back to the source, across all release calls. */
    released: () => [...released],
    reaped: () => callsOf('reaped').map((c) => (c.params as { report: WorkerReport }).report),
    trips: () => callsOf('breakerTripped').map((c) => c.params as { crashes: number; trips: number; cooldownMs: number }),
    /** The breaker's notifications, in order: tripped (with its cooldown), half-open, closed. */
    breakerLog: () =>
      calls
        .filter((c) => ['breakerTripped', 'breaker.half-open', 'breaker.closed'].includes(c.name))
        .map((c) => (c.name === 'breakerTripped' ? `tripped ${(c.params as { cooldownMs: number }).cooldownMs}` : c.name.slice('breaker.'.length))),
    /** Delivery ids every fake process was told to run. */
    runs: () =>
      [...fakes.all.values()].flatMap((p) => p.commands.flatMap((c) => (c.type === 'proc.run' ? [c.deliveryId] : []))),
    /** Live workers as their own machines have them (state at the top level, delivery held). */
    workers: (): Record<string, WorkerView> =>
      Object.fromEntries(
        [...workers.live].map(([id, actor]) => {
          const snap = actor.getSnapshot();
          const value = snap.value as string | Record<string, unknown>;
          const state = typeof value === 'string' ? value : Object.keys(value)[0];
          return [id, { state, deliveryId: snap.context.deliveryId }];
        }),
      ),
    workerIds: () => [...workers.live.keys()],
  };
}

type Pool = Awaited<ReturnType<typeof startPool>>;

/** The worker's process runs its task to a result and exits by itself (single use). */
function succeed(p: Pool, workerId: string, result: unknown = null) {
  const proc = p.proc(workerId);
  proc.result(result);
  proc.exit({ code: 0 });
}

/** A worker spawned for a delivery starts and its process dies during the task. */
function crash(p: Pool, workerId: string, exit: { memory?: boolean } = {}) {
  const proc = p.proc(workerId);
  proc.start();
  proc.exit({ code: null, signal: 'SIGSEGV', ...exit });
}

/** Like the driver on ENOENT: a spawn error, then an exit with no code. */
function spawnFail(p: Pool, workerId: string) {
  const proc = p.proc(workerId);
  proc.send({ type: 'proc.spawnError', error: { message: 'spawn ENOENT', code: 'ENOENT' } });
  proc.exit({ code: null, signal: null });
}

describe('pool machine: starting', () => {
  it('stays in starting until startup resolves, keeping deliveries in the backlog, then dispatches them', async () => {
    const gate = deferred();
    const p = await startPool({ maxWorkers: 2 }, { startup: () => gate.promise, noWait: true });
    p.deliver('d1', 'd2', 'd3');
    expect(p.state()).toBe('starting');
    expect(p.context().backlog).toEqual(['d1', 'd2', 'd3']);
    expect(p.fakes.all.size).toBe(0);
    gate.resolve();
    await waitFor(p.pool, (s) => s.matches('running'));
    expect(p.workers()).toEqual({
      'worker.1': { state: 'spawning', deliveryId: 'd1' },
      'worker.2': { state: 'spawning', deliveryId: 'd2' },
    });
    expect(p.context().backlog).toEqual(['d3']);
    expect(p.calls).toEqual([]);
  });

  it('a startup that rejects ends in stopped with no workers, giving back what was delivered meanwhile', async () => {
    const gate = deferred();
    const p = await startPool({ spares: 1 }, { startup: () => gate.promise, noWait: true });
    p.deliver('d1', 'd2');
    gate.reject(new Error('connection refused'));
    await waitFor(p.pool, (s) => s.status === 'done');
    expect(p.state()).toBe('stopped');
    expect(p.fakes.all.size).toBe(0);
    expect(p.calls.map((c) => c.name)).toEqual(['release']);
    expect(p.released()).toEqual(['d1', 'd2']);
  });

  it('a startup that rejects leaves its error in the output (PoolOutput.error)', async () => {
    const error = new Error('connection refused');
    const p = await startPool({}, { startup: async () => Promise.reject(error) });
    expect(p.state()).toBe('stopped');
    expect(p.snapshot().output).toEqual({ error });
  });

  it('stop while starting releases the backlog and stops', async () => {
    const gate = deferred();
    const p = await startPool({}, { startup: () => gate.promise, noWait: true });
    p.deliver('d1', 'd2');
    p.pool.send({ type: 'stop' });
    expect(p.state()).toBe('stopped');
    expect(p.released()).toEqual(['d1', 'd2']);
    expect(p.count('pauseIntake')).toBe(1);
    expect(p.count('closeIntake')).toBe(1);
    gate.resolve();
    await gate.promise;
    expect(p.fakes.all.size).toBe(0);
  });
});

describe('pool machine: dispatch', () => {
  it('starts a burst in waves of maxSpawning: the next starts as one leaves spawning', async () => {
    const p = await startPool({ maxWorkers: 5, maxSpawning: 2 });
    p.deliver('d1', 'd2', 'd3', 'd4', 'd5');
    expect(p.workerIds()).toEqual(['worker.1', 'worker.2']);
    expect(p.context().backlog).toEqual(['d3', 'd4', 'd5']);
    p.proc('worker.1').start();
    expect(p.workerIds()).toEqual(['worker.1', 'worker.2', 'worker.3']);
    p.proc('worker.2').start();
    p.proc('worker.3').start();
    expect(p.workerIds()).toHaveLength(5);
    expect(p.context().backlog).toEqual([]);
    expect(p.runs()).toEqual(['d1', 'd2', 'd3']);
  });

  it('spawns workers just in time up to maxWorkers; the rest wait in the backlog', async () => {
    const p = await startPool({ maxWorkers: 2 });
    expect(p.fakes.all.size).toBe(0);
    p.deliver('d1', 'd2', 'd3');
    expect(p.workerIds()).toEqual(['worker.1', 'worker.2']);
    expect(p.context().backlog).toEqual(['d3']);
    p.proc('worker.1').start();
    p.proc('worker.2').start();
    expect(p.runs()).toEqual(['d1', 'd2']);
  });

  it('a reaped worker frees its slot and the backlog is dispatched to a new worker', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.deliver('d1', 'd2', 'd3');
    p.proc('worker.1').start(11);
    p.proc('worker.1').result('one');
    expect(p.settled()).toEqual([{ deliveryId: 'd1', outcome: { status: 'resolved', result: 'one' } }]);
    // Reported but not yet exited: it still holds its slot.
    expect(p.workers()['worker.1']).toEqual({ state: 'terminating', deliveryId: null });
    expect(p.context().backlog).toEqual(['d3']);
    expect(p.fakes.all.has('worker.3')).toBe(false);
    p.proc('worker.1').exit({ code: 0 });
    expect(p.reaped()).toEqual([
      { workerId: 'worker.1', pid: 11, exitCode: 0, signal: null, served: 1, last: 'resolved' },
    ]);
    expect(p.workerIds()).toEqual(['worker.2', 'worker.3']);
    expect(p.workers()['worker.3']).toEqual({ state: 'spawning', deliveryId: 'd3' });
    expect(p.context().backlog).toEqual([]);
    expect(p.proc('worker.1').stopped).toBe(true);
  });

  it('keeps spares warm and hands deliveries to them first', async () => {
    const p = await startPool({ maxWorkers: 3, spares: 1 });
    expect(p.workers()).toEqual({ 'worker.1': { state: 'spawning', deliveryId: null } });
    p.proc('worker.1').start();
    expect(p.workers()['worker.1']).toEqual({ state: 'ready', deliveryId: null });
    p.deliver('d1');
    expect(p.workers()).toEqual({
      'worker.1': { state: 'running', deliveryId: 'd1' },
      'worker.2': { state: 'spawning', deliveryId: null },
    });
    expect(p.proc('worker.1').commands).toEqual([{ type: 'proc.run', deliveryId: 'd1', last: true }]);
  });

  it('a spare still starting takes a delivery and runs it when ready', async () => {
    const p = await startPool({ maxWorkers: 2, spares: 1 });
    p.deliver('d1');
    expect(p.workers()).toEqual({
      'worker.1': { state: 'spawning', deliveryId: 'd1' },
      'worker.2': { state: 'spawning', deliveryId: null },
    });
    p.proc('worker.1').start();
    expect(p.runs()).toEqual(['d1']);
  });

  it('spares never push the pool past maxWorkers', async () => {
    const p = await startPool({ maxWorkers: 2, spares: 2 });
    p.deliver('d1', 'd2', 'd3');
    expect(p.workerIds()).toHaveLength(2);
    expect(p.context().backlog).toEqual(['d3']);
  });

  it('a reused worker goes back to ready and takes the next delivery', async () => {
    const p = await startPool({ maxWorkers: 1, maxTasksPerWorker: 2 });
    p.deliver('d1', 'd2');
    p.proc('worker.1').start();
    p.proc('worker.1').result(1);
    expect(p.settledIds()).toEqual(['d1']);
    expect(p.workers()['worker.1']).toEqual({ state: 'running', deliveryId: 'd2' });
    expect(p.proc('worker.1').commands).toEqual([
      { type: 'proc.run', deliveryId: 'd1', last: false },
      { type: 'proc.run', deliveryId: 'd2', last: true },
    ]);
    succeed(p, 'worker.1', 2);
    expect(p.settledIds()).toEqual(['d1', 'd2']);
    expect(p.fakes.all.size).toBe(1);
    expect(p.workerIds()).toEqual([]);
  });

  it('settles every delivery exactly once, never over maxWorkers, under a stream of work', async () => {
    const p = await startPool({ maxWorkers: 3, spares: 1 });
    const ids = Array.from({ length: 12 }, (_, i) => `d${i + 1}`);
    p.deliver(...ids.slice(0, 6));
    const handled = new Set<string>();
    let more = ids.slice(6);
    for (let round = 0; round < 50 && p.settledIds().length < ids.length; round++) {
      for (const [id, proc] of [...p.fakes.all]) {
        if (handled.has(id)) continue;
        const slot = p.workers()[id];
        if (!slot) continue;
        if (proc.commands.length === 0) {
          proc.start();
          if (proc.commands.length === 0) continue; // an idle spare
        }
        handled.add(id);
        succeed(p, id, id);
        if (more.length > 0) {
          p.deliver(more[0]);
          more = more.slice(1);
        }
      }
    }
    expect([...p.settledIds()].sort()).toEqual([...ids].sort());
    expect(p.count('settle')).toBe(ids.length);
    expect(p.maxLive()).toBe(3);
    expect(p.released()).toEqual([]);
  });
});

describe('pool machine: reaping', () => {
  it('a worker actor that errors is reaped: its delivery goes back to the front of the backlog', async () => {
    const p = await startPool({ maxWorkers: 1 }, { fake: { throwOnStart: (id) => id === 'worker.1' } });
    p.deliver('d1', 'd2');
    expect(p.released()).toEqual([]);
    expect(p.reaped()).toEqual([
      { workerId: 'worker.1', pid: null, exitCode: null, signal: null, served: 0, last: null },
    ]);
    // The freed slot takes the delivery the dead worker never ran, before the rest.
    expect(p.workers()).toEqual({ 'worker.2': { state: 'spawning', deliveryId: 'd1' } });
    expect(p.context().backlog).toEqual(['d2']);
    expect(p.settled()).toEqual([]);
  });
});

describe('pool machine: crash breaker', () => {
  it('trips on the crash after maxCrashes within crashWindow: pauses intake, then resumes after breakerCooldown', async () => {
    const p = await startPool({ maxWorkers: 4, maxCrashes: 2 });
    p.deliver('d1', 'd2', 'd3', 'd4');
    crash(p, 'worker.1');
    crash(p, 'worker.2');
    expect(p.state()).toBe('running');
    expect(p.context().crashes).toBe(2);
    expect(p.trips()).toEqual([]);
    crash(p, 'worker.3');
    expect(p.state()).toBe('paused');
    expect(p.context().pausedBy).toBe('breaker');
    expect(p.trips()).toEqual([{ crashes: 3, trips: 1, cooldownMs: POOL_DELAYS.breakerCooldown }]);
    expect(p.context().breaker).toBe('open');
    expect(p.count('pauseIntake')).toBe(1);
    // The outcome that tripped the breaker is settled like any other.
    expect(p.settledIds()).toEqual(['d1', 'd2', 'd3']);
    expect(p.settled()[2].outcome).toMatchObject({ status: 'failed', kind: 'crash' });

    p.clock.increment(POOL_DELAYS.breakerCooldown - 1);
    expect(p.state()).toBe('paused');
    expect(p.count('resumeIntake')).toBe(0);
    p.clock.increment(1);
    expect(p.state()).toBe('running');
    expect(p.context().pausedBy).toBeNull();
    expect(p.context().breaker).toBe('half-open');
    expect(p.count('resumeIntake')).toBe(1);
    expect(p.count('breakerTripped')).toBe(1);
  });

  it('counts memory and spawn failures as crashes', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 2 });
    p.deliver('d1', 'd2', 'd3');
    crash(p, 'worker.1', { memory: true });
    spawnFail(p, 'worker.2');
    expect(p.context().crashes).toBe(2);
    p.clock.increment(WORKER_DELAYS.spawnTimeout);
    expect(p.settled().map((s) => (s.outcome as { kind: string }).kind)).toEqual(['memory', 'spawn', 'spawn']);
    expect(p.state()).toBe('paused');
    expect(p.trips()).toEqual([{ crashes: 3, trips: 1, cooldownMs: POOL_DELAYS.breakerCooldown }]);
  });

  it('error and timeout outcomes do not count', async () => {
    const p = await startPool({ maxWorkers: 6, maxCrashes: 2 });
    p.deliver('d1', 'd2', 'd3', 'd4', 'd5', 'd6');
    for (const id of ['worker.1', 'worker.2', 'worker.3']) {
      p.proc(id).start();
      p.proc(id).send({ type: 'proc.failed', error: { message: 'handler threw' }, retryable: true });
    }
    for (const id of ['worker.4', 'worker.5', 'worker.6']) p.proc(id).start();
    p.clock.increment(WORKER_DELAYS.taskTimeout);
    expect(p.settled().map((s) => (s.outcome as { kind: string }).kind)).toEqual([
      'error', 'error', 'error', 'timeout', 'timeout', 'timeout',
    ]);
    expect(p.context().crashes).toBe(0);
    expect(p.state()).toBe('running');
    expect(p.trips()).toEqual([]);
  });

  it('crashes older than crashWindow expire and do not trip the breaker', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 2 });
    p.deliver('d1', 'd2');
    crash(p, 'worker.1');
    crash(p, 'worker.2');
    p.clock.increment(POOL_DELAYS.crashWindow);
    expect(p.context().crashes).toBe(0);
    p.deliver('d3');
    crash(p, 'worker.3');
    expect(p.state()).toBe('running');
    expect(p.context().crashes).toBe(1);
    expect(p.trips()).toEqual([]);
  });

  it('a crash just inside crashWindow still counts', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 2 });
    p.deliver('d1');
    crash(p, 'worker.1');
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    p.deliver('d2');
    crash(p, 'worker.2');
    p.clock.increment(POOL_DELAYS.crashWindow / 2 - 1);
    p.deliver('d3');
    crash(p, 'worker.3');
    expect(p.state()).toBe('paused');
  });

  it('the window slides: each crash expires crashWindow after it happened', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 5 });
    p.deliver('d1');
    crash(p, 'worker.1');
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    p.deliver('d2');
    crash(p, 'worker.2');
    expect(p.context().crashes).toBe(2);
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    expect(p.context().crashes).toBe(1);
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    expect(p.context().crashes).toBe(0);
  });

  it('while tripped, deliveries wait in the backlog and running workers still settle; cooldown dispatches them', async () => {
    const p = await startPool({ maxWorkers: 4, maxCrashes: 1 });
    p.deliver('d1', 'd2', 'd3');
    p.proc('worker.3').start();
    crash(p, 'worker.1');
    crash(p, 'worker.2');
    expect(p.state()).toBe('paused');
    p.deliver('d4');
    expect(p.context().backlog).toEqual(['d4']);
    expect(p.fakes.all.has('worker.4')).toBe(false);
    succeed(p, 'worker.3', 'ok');
    expect(p.settledIds()).toEqual(['d1', 'd2', 'd3']);
    p.clock.increment(POOL_DELAYS.breakerCooldown);
    expect(p.state()).toBe('running');
    expect(p.context().backlog).toEqual([]);
    expect(p.workers()['worker.4']).toEqual({ state: 'spawning', deliveryId: 'd4' });
  });
});

/** A pool whose breaker tripped on the crashes of d1 and d2, with d3 and d4 waiting in the backlog. */
async function trippedPool(partial: Partial<PoolInput> = {}, options: StartOptions = {}) {
  const p = await startPool({ maxWorkers: 2, maxCrashes: 0, ...partial }, options);
  p.deliver('d1', 'd2');
  crash(p, 'worker.1');
  crash(p, 'worker.2');
  p.deliver('d3', 'd4');
  return p;
}

describe('pool machine: the breaker holds (half-open probe, growing cooldown)', () => {
  it('after the cooldown exactly one attempt runs as the probe; its crash re-opens with the cooldown doubled, up to the ceiling', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 0 });
    p.deliver('d1', 'd2', 'd3', 'd4', 'd5', 'd6', 'd7');
    // d1..d3 start at once; the first crash trips (maxCrashes 0); the others finish their attempts.
    crash(p, 'worker.1');
    expect(p.context().breaker).toBe('open');
    crash(p, 'worker.2');
    crash(p, 'worker.3');
    expect(p.workerIds()).toEqual([]);
    const cooldowns: number[] = [];
    for (let probe = 0; probe < 4; probe++) {
      const { cooldown } = p.context();
      cooldowns.push(cooldown);
      p.clock.increment(cooldown - 1);
      expect(p.state()).toBe('paused');
      p.clock.increment(1);
      expect(p.state()).toBe('running');
      expect(p.context().breaker).toBe('half-open');
      // One worker for the probe, however many deliveries wait and slots are free.
      expect(p.workerIds()).toHaveLength(1);
      expect(p.context().probe).toBe(p.workers()[p.workerIds()[0]].deliveryId);
      crash(p, p.workerIds()[0]);
      expect(p.state()).toBe('paused');
    }
    expect(cooldowns).toEqual([2_000, 4_000, 7_000, 7_000]);
    expect(p.trips().map((t) => t.trips)).toEqual([1, 2, 3, 4, 5]);
    expect(p.breakerLog()).toEqual([
      'tripped 2000', 'half-open', 'tripped 4000', 'half-open', 'tripped 7000', 'half-open', 'tripped 7000', 'half-open', 'tripped 7000',
    ]);
  });

  it('a probe that does not crash closes the breaker: the backlog is dispatched again to every free slot', async () => {
    const p = await startPool({ maxWorkers: 3, maxCrashes: 0 });
    p.deliver('d1', 'd2', 'd3', 'd4', 'd5');
    crash(p, 'worker.1');
    crash(p, 'worker.2');
    crash(p, 'worker.3');
    p.clock.increment(POOL_DELAYS.breakerCooldown);
    expect(p.workerIds()).toEqual(['worker.4']);
    p.proc('worker.4').start();
    // While the probe runs, nothing else starts.
    p.deliver('d6');
    expect(p.workerIds()).toEqual(['worker.4']);
    p.proc('worker.4').result('fine');
    expect(p.context().breaker).toBe('closed');
    expect(p.breakerLog()).toEqual(['tripped 2000', 'half-open', 'closed']);
    // worker.4 is still leaving (not reaped): the two free slots take the backlog.
    expect(p.workers()).toMatchObject({ 'worker.5': { deliveryId: 'd5' }, 'worker.6': { deliveryId: 'd6' } });
    expect(p.context().backlog).toEqual([]);
  });

  it('the cooldown returns to breakerCooldown once crashWindow passes closed without a trip, not before', async () => {
    const p = await startPool({ maxWorkers: 1, maxCrashes: 0 });
    p.deliver('d1', 'd2', 'd3');
    crash(p, 'worker.1');
    p.clock.increment(2_000);
    crash(p, 'worker.2');
    expect(p.context().cooldown).toBe(4_000);
    p.clock.increment(4_000);
    p.proc('worker.3').start();
    succeed(p, 'worker.3');
    expect(p.context().breaker).toBe('closed');
    // Closed, the grown cooldown stands for crashWindow: a trip now would pause 4 s.
    p.clock.increment(POOL_DELAYS.crashWindow - 1);
    expect(p.context().cooldown).toBe(4_000);
    p.clock.increment(1);
    expect(p.context().cooldown).toBe(POOL_DELAYS.breakerCooldown);
    p.deliver('d4');
    crash(p, 'worker.4');
    expect(p.trips().map((t) => t.cooldownMs)).toEqual([2_000, 4_000, 2_000]);
  });

  it('a trip during the quiet window keeps the grown cooldown (the storm goes on)', async () => {
    const p = await startPool({ maxWorkers: 1, maxCrashes: 0 });
    p.deliver('d1', 'd2', 'd3');
    crash(p, 'worker.1');
    p.clock.increment(2_000);
    crash(p, 'worker.2');
    p.clock.increment(4_000);
    p.proc('worker.3').start();
    succeed(p, 'worker.3');
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    p.deliver('d4');
    crash(p, 'worker.4');
    expect(p.trips().map((t) => t.cooldownMs)).toEqual([2_000, 4_000, 4_000]);
    // The quiet window of the earlier close was called off by the trip.
    p.clock.increment(POOL_DELAYS.crashWindow / 2);
    expect(p.context().cooldown).toBe(4_000);
  });

  it('resume cuts the cooldown short: the breaker goes half-open and the next attempt is its probe', async () => {
    const p = await trippedPool();
    p.pool.send({ type: 'resume' });
    expect(p.context().breaker).toBe('half-open');
    expect(p.workerIds()).toEqual(['worker.3']);
  });

  it('under a user pause the cooldown still ends (half-open); the probe waits for resume', async () => {
    const p = await trippedPool();
    p.pool.send({ type: 'pause' });
    p.clock.increment(POOL_DELAYS.breakerCooldown);
    expect(p.state()).toBe('paused');
    expect(p.context()).toMatchObject({ breaker: 'half-open', pausedBy: 'user' });
    expect(p.workerIds()).toEqual([]);
    p.pool.send({ type: 'resume' });
    expect(p.workerIds()).toEqual(['worker.3']);
  });

  // A cooldown longer than crashWindow: by the probe, the window holds no crash, so only the
  // probe's own verdict can re-open the breaker.
  const LONG = { maxWorkers: 2, maxCrashes: 1, breakerCooldown: 20_000, breakerMaxCooldown: 100_000 };

  it('the probe crashing re-opens the breaker even with the window empty', async () => {
    const p = await trippedPool(LONG);
    p.clock.increment(20_000);
    expect(p.context()).toMatchObject({ breaker: 'half-open', crashes: 0 });
    crash(p, 'worker.3');
    expect(p.state()).toBe('paused');
    expect(p.trips().map((t) => t.cooldownMs)).toEqual([20_000, 40_000]);
  });

  it("the probe's worker failing to start re-opens the breaker", async () => {
    const p = await trippedPool(LONG, { fake: { throwOnStart: (id) => id === 'worker.3' } });
    p.clock.increment(20_000);
    expect(p.state()).toBe('paused');
    expect(p.trips().map((t) => t.cooldownMs)).toEqual([20_000, 40_000]);
    // The probe never ran: its delivery went back to the backlog, and pausing gave the backlog
    // back to the source (last first, so the source keeps its order), never settled.
    expect(p.context().backlog).toEqual([]);
    expect(p.released().slice(-2)).toEqual(['d4', 'd3']);
    expect(p.settledIds()).not.toContain('d3');
  });

  it('a probe cancelled proves nothing: the next delivery is let through as the probe', async () => {
    const p = await trippedPool(LONG);
    p.clock.increment(20_000);
    p.proc('worker.3').start();
    p.pool.send({ type: 'task.cancel', deliveryId: 'd3', workerId: 'worker.3' });
    p.proc('worker.3').exit({ code: null, signal: 'SIGTERM' });
    expect(p.context()).toMatchObject({ breaker: 'half-open', probe: 'd4' });
    expect(p.workers()['worker.4']).toEqual({ state: 'spawning', deliveryId: 'd4' });
  });

  it('draining overrides the breaker: it closes and the backlog runs', async () => {
    const p = await trippedPool();
    p.pool.send({ type: 'drain' });
    expect(p.context().breaker).toBe('closed');
    expect(p.breakerLog()).toEqual(['tripped 2000', 'closed']);
    expect(p.workerIds()).toEqual(['worker.3', 'worker.4']);
  });
});

describe('pool machine: cancel', () => {
  it('a delivery in the backlog is removed and settled cancelled; it never reaches a worker', async () => {
    const p = await startPool({ maxWorkers: 1 });
    p.deliver('d1', 'd2', 'd3');
    p.pool.send({ type: 'task.cancel', deliveryId: 'd2', workerId: null });
    expect(p.context().backlog).toEqual(['d3']);
    expect(p.settled()).toEqual([
      { deliveryId: 'd2', outcome: { status: 'failed', kind: 'cancelled', message: 'cancelled before it started', retryable: false } },
    ]);
    p.proc('worker.1').start();
    succeed(p, 'worker.1');
    p.proc('worker.2').start();
    succeed(p, 'worker.2');
    expect(p.runs()).toEqual(['d1', 'd3']);
  });

  it('a running attempt: its worker is told, terminates, and reports cancelled only once its process exited', async () => {
    const p = await startPool({ maxWorkers: 1 });
    p.deliver('d1', 'd2');
    p.proc('worker.1').start();
    p.pool.send({ type: 'task.cancel', deliveryId: 'd1', workerId: 'worker.1' });
    expect(p.proc('worker.1').commands).toEqual([
      { type: 'proc.run', deliveryId: 'd1', last: true },
      { type: 'proc.terminate', cancelled: true },
    ]);
    // A result on its way out changes nothing.
    p.proc('worker.1').result('too late');
    expect(p.settled()).toEqual([]);
    p.clock.increment(WORKER_DELAYS.killGrace);
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run', 'proc.terminate', 'proc.kill']);
    p.proc('worker.1').exit({ code: null, signal: 'SIGKILL' });
    expect(p.settled()).toEqual([
      { deliveryId: 'd1', outcome: { status: 'failed', kind: 'cancelled', message: 'cancelled while it ran; the worker was stopped', retryable: false } },
    ]);
    expect(p.workers()['worker.2']).toEqual({ state: 'spawning', deliveryId: 'd2' });
    expect(p.context().crashes).toBe(0);
  });

  it('a cancel for a delivery the worker no longer holds is ignored; one while stopping changes nothing', async () => {
    const p = await startPool({ maxWorkers: 1 });
    p.deliver('d1');
    p.proc('worker.1').start();
    p.pool.send({ type: 'task.cancel', deliveryId: 'd-other', workerId: 'worker.1' });
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run']);
    p.pool.send({ type: 'stop' });
    p.pool.send({ type: 'task.cancel', deliveryId: 'd1', workerId: 'worker.1' });
    expect(p.proc('worker.1').commands).toEqual([{ type: 'proc.run', deliveryId: 'd1', last: true }, { type: 'proc.terminate' }]);
    p.proc('worker.1').exit({ code: null, signal: 'SIGTERM' });
    expect(p.count('settle')).toBe(0);
  });
});

describe('pool machine: pause and resume', () => {
  it('a user pause holds deliveries in the backlog until resume, and never resumes by itself', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.pool.send({ type: 'pause' });
    expect(p.state()).toBe('paused');
    expect(p.context().pausedBy).toBe('user');
    expect(p.count('pauseIntake')).toBe(1);
    p.deliver('d1');
    expect(p.context().backlog).toEqual(['d1']);
    p.clock.increment(POOL_DELAYS.breakerCooldown * 10);
    expect(p.state()).toBe('paused');
    expect(p.count('resumeIntake')).toBe(0);
    p.pool.send({ type: 'resume' });
    expect(p.state()).toBe('running');
    expect(p.count('resumeIntake')).toBe(1);
    expect(p.workers()['worker.1']).toEqual({ state: 'spawning', deliveryId: 'd1' });
  });

  it('resume ends a breaker pause early', async () => {
    const p = await startPool({ maxWorkers: 1, maxCrashes: 0 });
    p.deliver('d1');
    crash(p, 'worker.1');
    expect(p.state()).toBe('paused');
    p.pool.send({ type: 'resume' });
    expect(p.state()).toBe('running');
    expect(p.count('resumeIntake')).toBe(1);
    p.clock.increment(POOL_DELAYS.breakerCooldown);
    expect(p.count('resumeIntake')).toBe(1);
  });

  it('a user pause during a breaker pause survives the cooldown', async () => {
    const p = await startPool({ maxWorkers: 1, maxCrashes: 0 });
    p.deliver('d1');
    crash(p, 'worker.1');
    p.pool.send({ type: 'pause' });
    p.clock.increment(POOL_DELAYS.breakerCooldown);
    expect(p.state()).toBe('paused');
    expect(p.count('resumeIntake')).toBe(0);
  });
});

describe('pool machine: drain', () => {
  it('closes intake, retires idle spares, finishes work, and stops only after source.drained and every reap', async () => {
    const p = await startPool({ maxWorkers: 3, spares: 1 });
    p.proc('worker.1').start();
    p.deliver('d1');
    // worker.1 is busy with d1, worker.2 is the new spare, still starting.
    p.pool.send({ type: 'drain' });
    expect(p.state()).toBe('draining');
    expect(p.count('closeIntake')).toBe(1);
    expect(p.context().spares).toBe(0);
    expect(p.proc('worker.2').commandTypes()).toEqual(['proc.terminate']);
    expect(p.workers()['worker.2']).toEqual({ state: 'terminating', deliveryId: null });
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run']);

    // The source still delivers what it held.
    p.deliver('d2');
    expect(p.workers()['worker.3']).toEqual({ state: 'spawning', deliveryId: 'd2' });

    succeed(p, 'worker.1');
    p.proc('worker.2').exit({ code: null, signal: 'SIGTERM' });
    p.proc('worker.3').start();
    succeed(p, 'worker.3');
    expect(p.workerIds()).toEqual([]);
    // No spare is spawned while draining.
    expect(p.fakes.all.size).toBe(3);
    expect(p.state()).toBe('draining');

    p.pool.send({ type: 'source.drained' });
    expect(p.state()).toBe('stopped');
    expect(p.snapshot().status).toBe('done');
    expect(p.workerIds()).toEqual([]);
    expect(p.settledIds()).toEqual(['d1', 'd2']);
    expect(p.released()).toEqual([]);
  });

  it('with source.drained already received, stops when the last worker is reaped', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.deliver('d1');
    p.proc('worker.1').start();
    p.pool.send({ type: 'drain' });
    p.pool.send({ type: 'source.drained' });
    expect(p.state()).toBe('draining');
    p.proc('worker.1').result('r');
    expect(p.state()).toBe('draining');
    p.proc('worker.1').exit({ code: 0 });
    expect(p.state()).toBe('stopped');
  });

  it('retires a ready spare, and a reused worker as soon as it is back to ready', async () => {
    const p = await startPool({ maxWorkers: 3, spares: 1, maxTasksPerWorker: 5 });
    p.proc('worker.1').start();
    p.deliver('d1');
    p.proc('worker.2').start();
    expect(p.workers()['worker.2'].state).toBe('ready');
    p.pool.send({ type: 'drain' });
    expect(p.proc('worker.2').commandTypes()).toEqual(['proc.terminate']);
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run']);
    p.proc('worker.1').result('r');
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    expect(p.settledIds()).toEqual(['d1']);
  });

  it('drain from a user pause dispatches the backlog', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.pool.send({ type: 'pause' });
    p.deliver('d1');
    p.pool.send({ type: 'drain' });
    expect(p.state()).toBe('draining');
    expect(p.workers()['worker.1']).toEqual({ state: 'spawning', deliveryId: 'd1' });
  });

  it('drain from paused leaves intake paused (resumeIntake is never called)', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.pool.send({ type: 'pause' });
    p.pool.send({ type: 'drain' });
    expect(p.state()).toBe('draining');
    // The source must deliver what it still holds for `source.drained` ever to come.
    expect(p.count('resumeIntake')).toBe(1);
  });
});

describe('pool machine: stop', () => {
  it('releases every held delivery, kills every worker, stops after the exits, and settles nothing late', async () => {
    const p = await startPool({ maxWorkers: 2 });
    p.deliver('d1', 'd2', 'd3');
    p.proc('worker.1').start();
    // worker.1 runs d1, worker.2 is starting with d2, d3 waits in the backlog.
    p.pool.send({ type: 'stop' });
    expect(p.state()).toBe('stopping');
    expect(p.calls.map((c) => c.name)).toEqual(['pauseIntake', 'closeIntake', 'release']);
    expect([...p.released()].sort()).toEqual(['d1', 'd2', 'd3']);
    expect(p.context().backlog).toEqual([]);
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    expect(p.proc('worker.2').commandTypes()).toEqual(['proc.terminate']);

    // A result the worker no longer wants, and an outcome arriving in stopping: not settled.
    p.proc('worker.1').result('late');
    p.pool.send({
      type: 'worker.outcome',
      workerId: 'worker.1',
      from: 'leaving',
      to: 'leaving',
      deliveryId: 'd1',
      outcome: { status: 'resolved', result: 'late' },
    });
    // A late delivery goes straight back.
    p.deliver('d4');
    expect(p.released()).toContain('d4');
    expect(p.fakes.all.size).toBe(2);

    p.clock.increment(WORKER_DELAYS.killGrace);
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run', 'proc.terminate', 'proc.kill']);
    p.proc('worker.1').exit({ code: null, signal: 'SIGKILL' });
    expect(p.state()).toBe('stopping');
    p.proc('worker.2').exit({ code: null, signal: 'SIGKILL' });
    expect(p.state()).toBe('stopped');
    expect(p.workerIds()).toEqual([]);
    expect(p.count('settle')).toBe(0);
    expect([...p.released()].sort()).toEqual(['d1', 'd2', 'd3', 'd4']);
    expect(p.reaped().map((r) => r.workerId)).toEqual(['worker.1', 'worker.2']);
  });

  it('stop while draining releases what is still held', async () => {
    const p = await startPool({ maxWorkers: 1 });
    p.deliver('d1', 'd2');
    p.pool.send({ type: 'drain' });
    p.pool.send({ type: 'stop' });
    expect(p.state()).toBe('stopping');
    expect([...p.released()].sort()).toEqual(['d1', 'd2']);
    p.proc('worker.1').exit({ code: null, signal: 'SIGTERM' });
    expect(p.state()).toBe('stopped');
  });

  it('stop while paused releases the backlog', async () => {
    const p = await startPool({ maxWorkers: 1 });
    p.pool.send({ type: 'pause' });
    p.deliver('d1');
    p.pool.send({ type: 'stop' });
    expect(p.state()).toBe('stopped');
    expect(p.released()).toEqual(['d1']);
  });
});

describe('pool machine: workers that leave while idle (regressions)', () => {
  it('a delivery never waits on a reused worker that idled out: it runs on the next one', async () => {
    const p = await startPool({ maxWorkers: 1, maxTasksPerWorker: 2 });
    p.deliver('d1');
    p.proc('worker.1').start();
    p.proc('worker.1').result('r1');
    expect(p.workers()['worker.1']).toEqual({ state: 'ready', deliveryId: null });
    p.clock.increment(WORKER_DELAYS.idleTimeout);
    // The worker is terminating; the pool still lists it as ready.
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    p.deliver('d2');
    p.proc('worker.1').exit({ code: null, signal: 'SIGTERM' });
    p.fakes.all.get('worker.2')?.start();
    expect(p.released()).toEqual([]);
    expect(p.runs()).toEqual(['d1', 'd2']);
  });

  it('a delivery never waits on a spare whose spawn timed out: it runs on the next one', async () => {
    const p = await startPool({ maxWorkers: 1, spares: 1 });
    p.clock.increment(WORKER_DELAYS.spawnTimeout);
    expect(p.proc('worker.1').commandTypes()).toEqual(['proc.terminate']);
    p.deliver('d1');
    p.proc('worker.1').exit({ code: null, signal: 'SIGTERM' });
    p.fakes.all.get('worker.2')?.start();
    expect(p.released()).toEqual([]);
    expect(p.runs()).toEqual(['d1']);
  });

  it('spares that fail to start count as crashes and trip the breaker', async () => {
    const p = await startPool({ maxWorkers: 2, spares: 1, maxCrashes: 2 });
    // The driver's ENOENT: spawn error and exit at once. Stop as soon as the breaker trips.
    for (let i = 1; i <= 4 && p.state() === 'running'; i++) spawnFail(p, `worker.${i}`);
    expect(p.state()).toBe('paused');
    expect(p.count('breakerTripped')).toBe(1);
  });
});
