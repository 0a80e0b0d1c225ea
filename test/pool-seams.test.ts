import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createPool, MemorySource } from '../src/index.js';
import type { Delivery, Settlement, Source, SourceConsumer, TaskResult } from '../src/index.js';
import { trackPools } from './helpers/pools.js';
import { fixture, until } from './helpers/procs.js';

/**
 * The pool's seams, with real workers: it takes any `Source`, its events cannot hurt it, and
 * a source's lost connection drops outcomes instead of settling them.
 */

const { spawned, track, startPool } = trackPools({ concurrency: 2, attempts: 2, retryDelay: 1, killGrace: 300, logLevel: 'silent' });

/** A pino logger whose lines are kept, parsed. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

/**
 * The embedded queue seen as a broker's queue: it has neither `cancel` nor `depth`, and
 * `publish` only when asked (else other processes feed it).
 */
function brokerLike(inner: MemorySource, publish: boolean): Source {
  return {
    open: (c, p) => inner.open(c, p),
    prefetch: (n) => inner.prefetch(n),
    pause: () => inner.pause(),
    resume: () => inner.resume(),
    settle: (d, s) => inner.settle(d, s),
    release: (d) => inner.release(d),
    ...(publish ? { publish: (payload: unknown, options: { defaultId: string }) => inner.publish(payload, options) } : {}),
    close: () => inner.close(),
    dispose: () => inner.dispose(),
  };
}

/** The embedded queue behind a source that records and delays its settlements. */
class SlowSettling implements Source {
  readonly inner = new MemorySource();
  readonly settled: { taskId: string; action: Settlement['action']; at: number }[] = [];
  constructor(readonly delayMs: number) {}
  open(consumer: SourceConsumer, prefetch: number) {
    return this.inner.open(consumer, prefetch);
  }
  prefetch(n: number) {
    this.inner.prefetch(n);
  }
  pause() {
    this.inner.pause();
  }
  resume() {
    this.inner.resume();
  }
  async settle(delivery: Delivery, settlement: Settlement) {
    await new Promise((r) => setTimeout(r, this.delayMs));
    this.settled.push({ taskId: delivery.task.id, action: settlement.action, at: performance.now() });
    await this.inner.settle(delivery, settlement);
  }
  release(delivery: Delivery) {
    return this.inner.release(delivery);
  }
  publish(payload: unknown, options: { defaultId: string }) {
    this.inner.publish(payload, options);
  }
  close() {
    this.inner.close();
  }
  dispose() {
    return this.inner.dispose();
  }
}

describe('events are safe', () => {
  it('a listener that throws, in any event, loses no task, settles nothing twice and stops nothing; the error is logged', async () => {
    const { logger, lines } = capturingLogger();
    const pool = await startPool({ worker: { module: fixture('flaky.js') }, logger });
    const thrown: string[] = [];
    for (const name of ['outcome', 'attempt', 'worker:spawned', 'worker:reaped'] as const) {
      pool.on(name, () => {
        thrown.push(name);
        throw new Error(`listener of ${name} failed`);
      });
    }
    const attempts: string[] = [];
    pool.on('attempt', (a) => attempts.push(`${a.taskId}#${a.attempt}`));
    const results = await Promise.all([
      pool.run({ id: 'flaky-1' }),
      pool.run({ id: 'flaky-2' }),
      pool.run({ id: 'bad', params: { always: true } }),
    ]);
    expect(results.map((r) => [r.id, r.status, r.attempts])).toEqual([
      ['flaky-1', 'resolved', 2],
      ['flaky-2', 'resolved', 2],
      ['bad', 'failed', 2],
    ]);
    // One attempt event per attempt (a listener after a throwing one still hears each).
    await until(() => attempts.length === 6, 'six attempt events');
    expect([...attempts].sort()).toEqual(['bad#1', 'bad#2', 'flaky-1#1', 'flaky-1#2', 'flaky-2#1', 'flaky-2#2']);
    for (const name of ['outcome', 'attempt', 'worker:spawned', 'worker:reaped']) expect(thrown).toContain(name);
    const logged = lines.filter((l) => typeof l.msg === 'string' && (l.msg as string).includes('listener threw'));
    expect(new Set(logged.map((l) => l.event))).toEqual(new Set(['outcome', 'attempt', 'worker:spawned', 'worker:reaped']));
    // The pool goes on taking work.
    await expect(pool.run({ id: 'after' })).resolves.toMatchObject({ status: 'resolved', attempts: 2 });
  });

  it('run() resolves once the settlement is safe, and does not wait for listeners', async () => {
    const source = new SlowSettling(150);
    const pool = await startPool({ worker: { command: ['cat'] }, source });
    let listenerRan = 0;
    pool.on('outcome', () => {
      listenerRan = performance.now();
    });
    const result = await pool.run({ id: 'c1', n: 1 });
    const resolvedAt = performance.now();
    expect(result).toMatchObject({ id: 'c1', status: 'resolved', result: { id: 'c1', n: 1 } });
    expect(source.settled).toEqual([{ taskId: 'c1', action: 'ack', at: expect.any(Number) }]);
    expect(resolvedAt).toBeGreaterThanOrEqual(source.settled[0].at);
    // The listener is told after run() resolved, not before.
    await until(() => listenerRan > 0, 'the outcome listener');
    expect(listenerRan).toBeGreaterThanOrEqual(resolvedAt);
  });
});

describe('any source', () => {
  it('runs tasks from a source of the caller, and drains only after its settlements', async () => {
    const source = new SlowSettling(30);
    const pool = await startPool({ worker: { module: fixture('echo.js') }, source });
    const results = await Promise.all([1, 2, 3].map((n) => pool.run({ id: `t${n}`, params: { n } })));
    expect(results.map((r) => r.status)).toEqual(['resolved', 'resolved', 'resolved']);
    await pool.drain();
    expect(source.settled.map((s) => s.taskId).sort()).toEqual(['t1', 't2', 't3']);
  });

  it('a source without publish feeds the pool on its own; run() says it cannot take tasks', async () => {
    const inner = new MemorySource();
    // Like a broker queue other processes publish to: it consumes, and has no `publish`.
    const consumeOnly = brokerLike(inner, false);
    const pool = await startPool({ worker: { command: ['cat'] }, source: consumeOnly });
    await expect(pool.run({ id: 'x' })).rejects.toMatchObject({ code: 'TIDEPOOL_ERR_POOL_STATE' });
    const outcomes: TaskResult[] = [];
    pool.on('outcome', (r) => outcomes.push(r));
    inner.publish('{"id":"from-the-broker","v":1}', { defaultId: 'unused' });
    inner.publish('not a task', { defaultId: 'm-1' });
    await until(() => outcomes.length === 2, 'both outcomes');
    expect(outcomes.find((o) => o.id === 'from-the-broker')).toMatchObject({ status: 'resolved', result: { v: 1 } });
    expect(outcomes.find((o) => o.id === 'm-1')).toMatchObject({ status: 'failed', error: { kind: 'malformed' }, attempts: 0 });
    expect(inner.deadLetters.map((l) => [l.task.id, l.reason.split(':')[0]])).toEqual([['m-1', 'malformed']]);
  });

  it('a task cancelled while in a source that cannot drop it is acked when delivered, without a worker', async () => {
    const inner = new MemorySource();
    // Like a broker's queue: it takes tasks from run(), but cannot take one out of its middle.
    const broker = brokerLike(inner, true);
    const pool = await startPool({ worker: { module: fixture('slow.js') }, source: broker, concurrency: 1 });
    const starts: string[] = [];
    pool.on('attempt:start', ({ taskId }) => starts.push(taskId));
    const first = pool.run({ id: 'first', params: { ms: 300 } });
    await until(() => starts.length === 1, 'the first task to start');
    const second = pool.run({ id: 'second', params: {} });
    expect(pool.cancel('second')).toBe('queued');
    expect(await second).toMatchObject({ status: 'failed', attempts: 0, error: { kind: 'cancelled' } });
    // Still in the queue: delivered once the first task is done, acked at once.
    expect(inner.size.ready).toBe(1);
    expect(await first).toMatchObject({ status: 'resolved' });
    await until(() => inner.size.ready === 0 && inner.size.unsettled === 0, 'the cancelled delivery to be acked');
    expect(starts).toEqual(['first']);
    expect(inner.deadLetters).toEqual([]);
    expect(pool.cancel('third')).toBe('unknown');
  });

  it('state and pausedBy follow the machine: stopped before start, starting during it, paused by the user, stopped after drain', async () => {
    const pool = track(createPool({ worker: { module: fixture('echo.js') }, logLevel: 'silent' }));
    expect([pool.state, pool.pausedBy, pool.queued]).toEqual(['stopped', null, 0]);
    const started = pool.start();
    expect(pool.state).toBe('starting');
    await started;
    expect(pool.state).toBe('running');
    pool.pause();
    expect([pool.state, pool.pausedBy]).toEqual(['paused', 'user']);
    const result = pool.run({ id: 'held', params: {} });
    expect(pool.queued).toBe(1);
    pool.resume();
    expect([pool.state, pool.pausedBy]).toEqual(['running', null]);
    expect(await result).toMatchObject({ status: 'resolved' });
    const drained = pool.drain();
    await until(() => pool.state !== 'running', 'the drain to begin');
    await drained;
    expect([pool.state, pool.pausedBy, pool.breaker.state]).toEqual(['stopped', null, 'closed']);
  });

  it('a payload that is not a task is dead-lettered by the source as malformed and never reaches a worker', async () => {
    const source = new MemorySource();
    const pool = await startPool({ worker: { module: fixture('echo.js') }, source });
    const cyclic: Record<string, unknown> = { id: 'cyc' };
    cyclic.self = cyclic;
    const results = await Promise.all([
      pool.run('[1,2]', { defaultId: 'arr' }),
      pool.run('{"id":7}', { defaultId: 'num-id' }),
      pool.run(null),
      pool.run({ id: 'big', n: 1n }),
      pool.run(cyclic),
    ]);
    for (const r of results) expect(r).toMatchObject({ status: 'failed', error: { kind: 'malformed' }, attempts: 0 });
    expect(results[0].id).toBe('arr');
    expect(results[3]).toMatchObject({ id: 'big', error: { message: expect.stringContaining('cannot be sent as JSON') } });
    expect(source.deadLetters).toHaveLength(5);
    expect(spawned.size).toBe(0);
  });

  it('a task whose id is already in flight is refused as malformed; the first runs', async () => {
    const pool = await startPool({ worker: { module: fixture('slow.js') } });
    const first = pool.run({ id: 'same', params: { ms: 200 } });
    const second = await pool.run({ id: 'same', params: { ms: 1 } });
    expect(second).toMatchObject({ status: 'failed', error: { kind: 'malformed', message: expect.stringContaining('already in the pool') } });
    await expect(first).resolves.toMatchObject({ status: 'resolved' });
  });
});

describe('a paused pool', () => {
  it('holds nothing it cannot run: deliveries waiting for a worker go back to the source, and run once resumed', async () => {
    // One worker starts at a time: the other deliveries wait in the pool's backlog.
    const pool = await startPool({ worker: { module: fixture('echo.js') }, concurrency: 4, maxSpawning: 1 });
    const results = ['a', 'b', 'c', 'd'].map((id) => pool.run({ id }));
    await until(() => pool.source.size.unsettled === 4, 'four deliveries in the pool');
    pool.pause();
    // The one handed to a starting worker stays; the rest are back in the queue, in order.
    expect(pool.source.size).toEqual({ ready: 3, delayed: 0, unsettled: 1 });
    pool.resume();
    expect((await Promise.all(results)).map((r) => [r.id, r.status])).toEqual([['a', 'resolved'], ['b', 'resolved'], ['c', 'resolved'], ['d', 'resolved']]);
  });
});

describe('a lost connection', () => {
  it('drops the outcome of an attempt that was running, and the task runs again from its redelivery', async () => {
    const source = new MemorySource();
    const pool = await startPool({ worker: { module: fixture('slow.js') }, source });
    const attempts: string[] = [];
    pool.on('attempt', (a) => attempts.push(`${a.taskId}#${a.attempt}`));
    const reaped: number[] = [];
    pool.on('worker:reaped', (r) => reaped.push(r.pid ?? 0));
    const started: number[] = [];
    pool.on('worker:spawned', ({ pid }) => started.push(pid));
    const result = pool.run({ id: 'long', params: { ms: 400 } });
    await until(() => started.length === 1, 'the first worker');
    source.interrupt();
    const final = await result;
    expect(final).toMatchObject({ id: 'long', status: 'resolved', attempts: 1 });
    // It ran twice (at-least-once), and only the run of the redelivery (the second worker)
    // was settled, whichever of the two ended first.
    await until(() => reaped.length === 2, 'both workers reaped');
    expect(attempts).toEqual(['long#1']);
    expect(source.size).toEqual({ ready: 0, delayed: 0, unsettled: 0 });
    expect(started).toHaveLength(2);
    expect((final as { result: { pid: number } }).result.pid).toBe(started[1]);
  });
});

describe('calls while start() checks the handler', () => {
  it('stop() during start() stops the pool: nothing runs, and it cannot start again', async () => {
    const pool = track(createPool({ worker: { module: fixture('echo.js') }, logLevel: 'silent' }));
    // start() may finish first (then the pool is stopped) or learn that it was stopped.
    const starting = pool.start().then(
      () => 'started',
      (err: { code?: string }) => err.code,
    );
    await pool.stop();
    expect(['started', 'TIDEPOOL_ERR_POOL_STOPPED']).toContain(await starting);
    await expect(pool.run({ id: 'late' })).rejects.toMatchObject({ code: 'TIDEPOOL_ERR_POOL_STATE' });
    await expect(pool.start()).rejects.toMatchObject({ code: 'TIDEPOOL_ERR_POOL_STATE', message: expect.stringContaining('create a new one') });
  });

  it('pause() during start() holds intake once started; resume() lets it run', async () => {
    const pool = await (async () => {
      const p = track(createPool({ worker: { module: fixture('echo.js') }, logLevel: 'silent' }));
      const starting = p.start();
      p.pause();
      await starting;
      return p;
    })();
    const result = pool.run({ id: 'held' });
    await new Promise((r) => setTimeout(r, 300));
    expect(spawned.size).toBe(0);
    pool.resume();
    await expect(result).resolves.toMatchObject({ status: 'resolved' });
  });

  it('drain() during start() drains: the pool ends with nothing run', async () => {
    const pool = track(createPool({ worker: { module: fixture('echo.js') }, logLevel: 'silent' }));
    const starting = pool.start().catch((e: unknown) => e);
    await pool.drain();
    await starting;
    await expect(pool.run({ id: 'late' })).rejects.toMatchObject({ code: 'TIDEPOOL_ERR_POOL_STATE' });
  });
});
