import { describe, expect, it } from 'vitest';
import { createActor, setup, SimulatedClock } from 'xstate';
import type { WorkerReport } from '../machines/types.js';
import { workerMachine } from '../machines/worker.js';
import type { WorkerCommand, WorkerInput, WorkerToPoolEvent } from '../machines/worker.js';
import { createFakeProcesses } from './helpers/fake-process.js';

/** Distinct values, so a transition on the wrong delay lands at the wrong time. */
const DELAYS = { spawnTimeout: 100, taskTimeout: 1_000, killGrace: 50, idleTimeout: 500 } as const;

type Outcome = Extract<WorkerToPoolEvent, { type: 'worker.outcome' }>;

/**
 * One worker machine as the child of a tiny parent that records what the worker reports
 * (`worker.ready`, `worker.outcome`, and its output), with a fake process and a simulated clock.
 */
function startWorker(input: Partial<WorkerInput> = {}) {
  const fakes = createFakeProcesses();
  const workerInput: WorkerInput = { workerId: 'w1', maxTasks: 1, ...input };
  const received: WorkerToPoolEvent[] = [];
  const done: WorkerReport[] = [];
  const clock = new SimulatedClock();
  const worker = createActor(workerMachine.provide({ actors: { process: fakes.logic }, delays: DELAYS }), { clock, input: workerInput });
  // What the pool hears: every report the worker emits, then its output when it is done.
  worker.on('*', (event) => received.push(event));
  worker.subscribe({ complete: () => done.push(worker.getSnapshot().output!) });
  worker.start();
  return {
    clock,
    worker,
    proc: fakes.get(workerInput.workerId),
    /** The output the parent received with `xstate.done.actor.worker`. */
    done,
    outcomes: () => received.filter((e): e is Outcome => e.type === 'worker.outcome'),
    readies: () => received.filter((e) => e.type === 'worker.ready'),
    /** Every report to the parent, in order. */
    all: () => [...received],
    state: () => worker.getSnapshot().value,
    context: () => worker.getSnapshot().context,
    send: (event: WorkerCommand) => worker.send(event),
    report: () => worker.getSnapshot().output,
  };
}

describe('worker machine: starting', () => {
  it('a spare goes spawning → ready, announces itself once and runs nothing', () => {
    const w = startWorker();
    expect(w.state()).toBe('spawning');
    expect(w.readies()).toEqual([]);
    w.proc.start(4242);
    expect(w.state()).toBe('ready');
    expect(w.context().pid).toBe(4242);
    expect(w.readies()).toEqual([{ type: 'worker.ready', workerId: 'w1', from: 'spawning' }]);
    expect(w.outcomes()).toEqual([]);
    expect(w.proc.commands).toEqual([]);
  });

  it('a worker spawned with a delivery goes spawning → running and runs it, without announcing ready', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    expect(w.state()).toBe('running');
    expect(w.proc.commands).toEqual([{ type: 'proc.run', deliveryId: 'd1', last: true }]);
    expect(w.readies()).toEqual([]);
  });

  it('task.assign while spawning is held until proc.ready, then runs', () => {
    const w = startWorker();
    w.send({ type: 'task.assign', deliveryId: 'd7' });
    expect(w.state()).toBe('spawning');
    expect(w.proc.commands).toEqual([]);
    w.proc.start();
    expect(w.state()).toBe('running');
    expect(w.proc.commands).toEqual([{ type: 'proc.run', deliveryId: 'd7', last: true }]);
    expect(w.readies()).toEqual([]);
  });

  it('ready → running on task.assign', () => {
    const w = startWorker();
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    expect(w.state()).toBe('running');
    expect(w.proc.commands).toEqual([{ type: 'proc.run', deliveryId: 'd1', last: true }]);
  });
});

describe('worker machine: spawn failures', () => {
  it('proc.spawnError with a delivery reports one retryable spawn failure, then terminates', () => {
    const w = startWorker({ deliveryId: 'd1' });
    const error = { name: 'Error', message: 'spawn /nope ENOENT', code: 'ENOENT' };
    w.proc.send({ type: 'proc.spawnError', error });
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0]).toMatchObject({
      type: 'worker.outcome',
      workerId: 'w1',
      deliveryId: 'd1',
      outcome: { status: 'failed', kind: 'spawn', retryable: true, error },
    });
    expect((w.outcomes()[0].outcome as { message: string }).message).toContain('spawn /nope ENOENT');
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.proc.exit({ code: null, signal: null });
    expect(w.state()).toBe('reaped');
    expect(w.report()).toEqual({ workerId: 'w1', pid: null, exitCode: null, signal: null, served: 0, last: 'spawn' });
    expect(w.outcomes()).toHaveLength(1);
  });

  it('proc.spawnError of a spare reports a spawn failure without a delivery (for the breaker), and terminates', () => {
    const w = startWorker();
    w.proc.send({ type: 'proc.spawnError', error: { message: 'EACCES' } });
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0]).toMatchObject({ deliveryId: null, outcome: { status: 'failed', kind: 'spawn' } });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    w.proc.exit({ code: null });
    expect(w.state()).toBe('reaped');
    expect(w.report()?.last).toBe('spawn');
  });

  it('proc.exit while spawning reports a spawn failure with the exit, and reaps at once', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.send({ type: 'proc.spawned', pid: 31 });
    w.proc.exit({ code: 9, signal: null, detail: 'bad option --x' });
    expect(w.outcomes()).toHaveLength(1);
    const { outcome } = w.outcomes()[0];
    expect(outcome).toMatchObject({ status: 'failed', kind: 'spawn', retryable: true, exitCode: 9, signal: null });
    expect((outcome as { message: string }).message).toContain('exit code 9');
    expect((outcome as { message: string }).message).toContain('bad option --x');
    expect(w.state()).toBe('reaped');
    // The process is gone: nothing to signal.
    expect(w.proc.commands).toEqual([]);
    expect(w.report()).toEqual({ workerId: 'w1', pid: 31, exitCode: 9, signal: null, served: 0, last: 'spawn' });
  });

  it('proc.exit of a spare while spawning reports a spawn failure without a delivery, and reaps', () => {
    const w = startWorker();
    w.proc.exit({ code: null, signal: 'SIGSEGV' });
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0]).toMatchObject({ deliveryId: null, outcome: { kind: 'spawn', signal: 'SIGSEGV' } });
    expect(w.state()).toBe('reaped');
    expect(w.report()).toMatchObject({ exitCode: null, signal: 'SIGSEGV', last: 'spawn' });
  });

  it('spawnTimeout reports a spawn failure, then SIGTERM, SIGKILL after killGrace, reaped on exit', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.clock.increment(DELAYS.spawnTimeout - 1);
    expect(w.state()).toBe('spawning');
    w.clock.increment(1);
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0].outcome).toMatchObject({ status: 'failed', kind: 'spawn', retryable: true });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.clock.increment(DELAYS.killGrace - 1);
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.clock.increment(1);
    expect(w.state()).toEqual({ terminating: 'killed' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate', 'proc.kill']);
    w.proc.exit({ code: null, signal: 'SIGKILL' });
    expect(w.state()).toBe('reaped');
    expect(w.outcomes()).toHaveLength(1);
  });

  it('a late proc.ready after the spawn timeout runs nothing', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.clock.increment(DELAYS.spawnTimeout);
    w.proc.start();
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    expect(w.state()).toEqual({ terminating: 'signalled' });
  });

  it('spawnTimeout of a spare reports a spawn failure without a delivery, and terminates it', () => {
    const w = startWorker();
    w.clock.increment(DELAYS.spawnTimeout);
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0]).toMatchObject({ deliveryId: null, outcome: { kind: 'spawn' } });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
  });
});

describe('worker machine: a single-use task', () => {
  it('running → resolved → awaitingExit → reaped on proc.result then proc.exit', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start(77);
    w.proc.result({ ok: 1 });
    expect(w.outcomes()).toEqual([
      { type: 'worker.outcome', workerId: 'w1', from: 'running', to: 'leaving', deliveryId: 'd1', outcome: { status: 'resolved', result: { ok: 1 } } },
    ]);
    expect(w.state()).toEqual({ terminating: 'awaitingExit' });
    // It was told the task was its last: it exits by itself, no signal.
    expect(w.proc.commandTypes()).toEqual(['proc.run']);
    expect(w.proc.stopped).toBe(false);
    w.proc.exit({ code: 0 });
    expect(w.state()).toBe('reaped');
    const report: WorkerReport = { workerId: 'w1', pid: 77, exitCode: 0, signal: null, served: 1, last: 'resolved' };
    expect(w.report()).toEqual(report);
    expect(w.done).toEqual([report]);
    expect(w.proc.stopped).toBe(true);
    expect(w.outcomes()).toHaveLength(1);
    expect(w.readies()).toEqual([]);
  });

  it('awaitingExit signals the process after killGrace when it does not exit by itself', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.proc.result('r');
    w.clock.increment(DELAYS.killGrace - 1);
    expect(w.state()).toEqual({ terminating: 'awaitingExit' });
    expect(w.proc.commandTypes()).toEqual(['proc.run']);
    w.clock.increment(1);
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    w.clock.increment(DELAYS.killGrace);
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate', 'proc.kill']);
    w.proc.exit({ code: null, signal: 'SIGKILL' });
    expect(w.report()).toMatchObject({ exitCode: null, signal: 'SIGKILL', served: 1, last: 'resolved' });
    // The exit after the outcome is not a second outcome.
    expect(w.outcomes()).toHaveLength(1);
  });
});

describe('worker machine: what the pool hears', () => {
  it('each report names the phase it leaves, and the phases chain: spawning → running → leaving', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.proc.result('r');
    w.proc.exit({ code: 0 });
    expect(w.all().map((e) => [e.type, 'from' in e ? e.from : null])).toEqual([
      ['worker.running', 'spawning'],
      ['worker.outcome', 'running'],
    ]);
  });

  it('a reused worker says with its outcome that it is ready again (one report per task), and leaving when retired', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.result(1);
    w.send({ type: 'worker.retire' });
    expect(w.all().map((e) => [e.type, 'from' in e ? e.from : null, 'to' in e ? e.to : null])).toEqual([
      ['worker.ready', 'spawning', null],
      ['worker.running', 'ready', null],
      ['worker.outcome', 'running', 'ready'],
      ['worker.leaving', 'ready', null],
    ]);
  });

  it('an outcome says `leaving` when the worker is not reused: a failure, or its last task', () => {
    const failed = startWorker({ maxTasks: 3 });
    failed.proc.start();
    failed.send({ type: 'task.assign', deliveryId: 'd1' });
    failed.proc.send({ type: 'proc.failed', error: { message: 'nope' }, retryable: true });
    const last = startWorker({ maxTasks: 1, deliveryId: 'd1' });
    last.proc.start();
    last.proc.result(1);
    for (const w of [failed, last]) {
      expect(w.outcomes().map((e) => e.to)).toEqual(['leaving']);
      expect(w.all().filter((e) => e.type === 'worker.ready' && e.from !== 'spawning')).toEqual([]);
    }
  });

  it.each([
    ['running', (w: ReturnType<typeof startWorker>) => w.proc.start()],
    ['terminating', (w: ReturnType<typeof startWorker>) => w.send({ type: 'worker.kill' })],
    ['spawning with a task already', () => {}],
  ])('declines a task.assign that finds it %s, so the delivery goes back', (_, setUp) => {
    const w = startWorker({ deliveryId: 'd1' });
    setUp(w);
    w.send({ type: 'task.assign', deliveryId: 'd2' });
    expect(w.all().filter((e) => e.type === 'worker.declined')).toEqual([{ type: 'worker.declined', workerId: 'w1', deliveryId: 'd2' }]);
    expect(w.proc.commands.filter((c) => c.type === 'proc.run' && c.deliveryId === 'd2')).toEqual([]);
  });
});

describe('worker machine: a task its process never read (proc.unsent)', () => {
  it('is given back declined, not an attempt: no outcome, not counted as served, and the worker ends', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start(41);
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.send({ type: 'proc.unsent', deliveryId: 'd1' });
    expect(w.all().map((e) => [e.type, 'from' in e ? e.from : null])).toEqual([
      ['worker.ready', 'spawning'],
      ['worker.running', 'ready'],
      ['worker.declined', null],
      ['worker.leaving', 'running'],
    ]);
    expect(w.all().find((e) => e.type === 'worker.declined')).toEqual({ type: 'worker.declined', workerId: 'w1', deliveryId: 'd1' });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    w.proc.exit({ code: null, signal: 'SIGKILL' });
    expect(w.outcomes()).toEqual([]);
    expect(w.report()).toMatchObject({ served: 0, pid: 41 });
  });

  it('about another delivery (a late one) is ignored', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd2' });
    w.proc.send({ type: 'proc.unsent', deliveryId: 'd1' });
    expect(w.state()).toBe('running');
  });
});

describe('worker machine: failures while running', () => {
  it.each([true, false])('proc.failed reports an error outcome carrying retryable=%s', (retryable) => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    const error = { name: 'TypeError', message: 'boom', stack: 'TypeError: boom\n    at x' };
    w.proc.send({ type: 'proc.failed', error, retryable });
    expect(w.outcomes()).toEqual([
      {
        type: 'worker.outcome',
        workerId: 'w1',
        from: 'running',
        to: 'leaving',
        deliveryId: 'd1',
        outcome: { status: 'failed', kind: 'error', message: 'boom', retryable, error },
      },
    ]);
    // Its last task: the process exits by itself after reporting.
    expect(w.state()).toEqual({ terminating: 'awaitingExit' });
    w.proc.exit({ code: 0 });
    expect(w.report()).toMatchObject({ served: 1, last: 'error' });
  });

  it('a worker with tasks left is not reused after proc.failed: it is signalled at once', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.send({ type: 'proc.failed', error: { message: 'nope' }, retryable: true });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    expect(w.readies()).toHaveLength(1);
  });

  it('proc.exit during running is a crash with the exit code, signal and stderr detail', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.proc.exit({ code: 1, signal: null, detail: 'Segmentation fault' });
    expect(w.outcomes()).toHaveLength(1);
    const { outcome } = w.outcomes()[0];
    expect(outcome).toMatchObject({ status: 'failed', kind: 'crash', retryable: true, exitCode: 1, signal: null });
    expect((outcome as { message: string }).message).toContain('exit code 1');
    expect((outcome as { message: string }).message).toContain('Segmentation fault');
    // Already exited: reaped without any signal.
    expect(w.state()).toBe('reaped');
    expect(w.proc.commandTypes()).toEqual(['proc.run']);
    expect(w.report()).toMatchObject({ exitCode: 1, signal: null, served: 1, last: 'crash' });
  });

  it('proc.exit with memory: true during running is a memory failure', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.proc.exit({ code: null, signal: 'SIGKILL', memory: true });
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0].outcome).toMatchObject({
      status: 'failed',
      kind: 'memory',
      retryable: true,
      exitCode: null,
      signal: 'SIGKILL',
    });
    expect(w.report()).toMatchObject({ signal: 'SIGKILL', last: 'memory' });
  });

  it('taskTimeout reports a timeout, SIGTERMs at once (even on its last task), SIGKILLs after killGrace', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.clock.increment(DELAYS.taskTimeout - 1);
    expect(w.state()).toBe('running');
    expect(w.outcomes()).toEqual([]);
    w.clock.increment(1);
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0].outcome).toMatchObject({ status: 'failed', kind: 'timeout', retryable: true });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    w.clock.increment(DELAYS.killGrace - 1);
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    w.clock.increment(1);
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate', 'proc.kill']);
    // A result that arrives after the timeout is not a second outcome.
    w.proc.result('too late');
    w.proc.exit({ code: null, signal: 'SIGKILL' });
    expect(w.state()).toBe('reaped');
    expect(w.outcomes()).toHaveLength(1);
    expect(w.report()).toMatchObject({ signal: 'SIGKILL', served: 1, last: 'timeout' });
  });
});

describe('worker machine: reuse (maxTasks > 1)', () => {
  it('resolved → ready between tasks; `last` is set only on the final task', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    for (const [i, deliveryId] of ['d1', 'd2', 'd3'].entries()) {
      expect(w.state()).toBe('ready');
      w.send({ type: 'task.assign', deliveryId });
      expect(w.proc.commands.at(-1)).toEqual({ type: 'proc.run', deliveryId, last: i === 2 });
      w.proc.result(i);
    }
    expect(w.outcomes().map((e) => [e.deliveryId, e.outcome])).toEqual([
      ['d1', { status: 'resolved', result: 0 }],
      ['d2', { status: 'resolved', result: 1 }],
      ['d3', { status: 'resolved', result: 2 }],
    ]);
    // Ready once at start; after each task but the last, the outcome says it.
    expect(w.readies()).toHaveLength(1);
    expect(w.outcomes().map((e) => e.to)).toEqual(['ready', 'ready', 'leaving']);
    expect(w.state()).toEqual({ terminating: 'awaitingExit' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.run', 'proc.run']);
    w.proc.exit({ code: 0 });
    expect(w.report()).toMatchObject({ served: 3, last: 'resolved', exitCode: 0 });
  });
});

describe('worker machine: idle timeout', () => {
  it('a fresh spare never times out', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.clock.increment(DELAYS.idleTimeout * 10);
    expect(w.state()).toBe('ready');
    expect(w.proc.commands).toEqual([]);
  });

  it('a worker that has served terminates after idleTimeout in ready', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.result(1);
    w.clock.increment(DELAYS.idleTimeout - 1);
    expect(w.state()).toBe('ready');
    w.clock.increment(1);
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    w.proc.exit({ code: null, signal: 'SIGTERM' });
    expect(w.report()).toMatchObject({ served: 1, last: 'resolved', signal: 'SIGTERM' });
    expect(w.outcomes()).toHaveLength(1);
  });

  it('the idle timer restarts each time the worker returns to ready', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.result(1);
    w.clock.increment(DELAYS.idleTimeout - 10);
    w.send({ type: 'task.assign', deliveryId: 'd2' });
    w.proc.result(2);
    w.clock.increment(DELAYS.idleTimeout - 1);
    expect(w.state()).toBe('ready');
    w.clock.increment(1);
    expect(w.state()).toEqual({ terminating: 'signalled' });
  });

  it('a task assigned while the idle worker is terminating is not run', () => {
    const w = startWorker({ maxTasks: 3 });
    w.proc.start();
    w.send({ type: 'task.assign', deliveryId: 'd1' });
    w.proc.result(1);
    w.clock.increment(DELAYS.idleTimeout);
    w.send({ type: 'task.assign', deliveryId: 'd2' });
    expect(w.proc.commands.filter((c) => c.type === 'proc.run')).toHaveLength(1);
    expect(w.state()).toEqual({ terminating: 'signalled' });
  });
});

describe('worker machine: proc.exit while idle', () => {
  it('a ready worker whose process dies is reaped at once, reporting a crash without a delivery', () => {
    const w = startWorker();
    w.proc.start(5);
    w.proc.exit({ code: 3 });
    expect(w.state()).toBe('reaped');
    // The breaker must see idle workers that die.
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0]).toMatchObject({ deliveryId: null, outcome: { status: 'failed', kind: 'crash', exitCode: 3 } });
    expect(w.proc.commands).toEqual([]);
    expect(w.report()).toEqual({ workerId: 'w1', pid: 5, exitCode: 3, signal: null, served: 0, last: 'crash' });
  });

  it('a fresh spare that exits 0 by itself (a command that does not wait for its task) is reaped with no failure', () => {
    const w = startWorker();
    w.proc.start(6);
    w.proc.exit({ code: 0 });
    expect(w.state()).toBe('reaped');
    expect(w.outcomes()).toEqual([]);
    expect(w.report()).toEqual({ workerId: 'w1', pid: 6, exitCode: 0, signal: null, served: 0, last: null });
  });
});

describe('worker machine: worker.retire and worker.kill', () => {
  it('retire while spawning terminates the spare with no outcome', () => {
    const w = startWorker();
    w.send({ type: 'worker.retire' });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.proc.exit({ code: null, signal: 'SIGTERM' });
    expect(w.state()).toBe('reaped');
    expect(w.outcomes()).toEqual([]);
  });

  it('kill while spawning drops the delivery: no outcome, nothing runs after proc.ready', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.send({ type: 'worker.kill' });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    w.proc.start();
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.proc.exit({ code: null, signal: 'SIGTERM' });
    expect(w.outcomes()).toEqual([]);
    expect(w.report()).toMatchObject({ served: 0, last: null, signal: 'SIGTERM' });
  });

  it.each(['worker.retire', 'worker.kill'] as const)('%s while ready: SIGTERM, SIGKILL after killGrace, reaped on exit', (type) => {
    const w = startWorker();
    w.proc.start();
    w.send({ type });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.clock.increment(DELAYS.killGrace);
    expect(w.proc.commandTypes()).toEqual(['proc.terminate', 'proc.kill']);
    w.proc.exit({ code: null, signal: 'SIGKILL' });
    expect(w.state()).toBe('reaped');
    expect(w.outcomes()).toEqual([]);
  });

  it('kill while running drops the task: no outcome, even if its result comes later', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.send({ type: 'worker.kill' });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
    w.proc.result('late');
    w.proc.exit({ code: null, signal: 'SIGTERM' });
    expect(w.outcomes()).toEqual([]);
    expect(w.report()).toMatchObject({ served: 1, signal: 'SIGTERM' });
  });

  it('retire while running lets the task finish and report', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.send({ type: 'worker.retire' });
    expect(w.state()).toBe('running');
    expect(w.proc.commandTypes()).toEqual(['proc.run']);
    w.proc.result('fine');
    expect(w.outcomes()).toHaveLength(1);
    expect(w.outcomes()[0].outcome).toEqual({ status: 'resolved', result: 'fine' });
  });

  it('kill while awaiting the exit signals at once', () => {
    const w = startWorker({ deliveryId: 'd1' });
    w.proc.start();
    w.proc.result('r');
    w.send({ type: 'worker.retire' });
    expect(w.state()).toEqual({ terminating: 'awaitingExit' });
    w.send({ type: 'worker.kill' });
    expect(w.state()).toEqual({ terminating: 'signalled' });
    expect(w.proc.commandTypes()).toEqual(['proc.run', 'proc.terminate']);
  });

  it('kill while already signalled sends nothing more before killGrace', () => {
    const w = startWorker();
    w.proc.start();
    w.send({ type: 'worker.retire' });
    w.clock.increment(DELAYS.killGrace - 1);
    w.send({ type: 'worker.kill' });
    w.send({ type: 'worker.retire' });
    expect(w.proc.commandTypes()).toEqual(['proc.terminate']);
    w.clock.increment(1);
    expect(w.proc.commandTypes()).toEqual(['proc.terminate', 'proc.kill']);
  });
});
