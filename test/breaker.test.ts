import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fromCallback, SimulatedClock } from 'xstate';
import type { ProcessCommand, ProcessInput } from '../machines/worker.js';
import { createPool, DEFAULTS } from '../src/index.js';
import type { BreakerTripped, TaskResult } from '../src/index.js';
import { trackPools } from './helpers/pools.js';
import { fixture, until } from './helpers/procs.js';

/**
 * The crash breaker holds a storm: its cooldown grows with each probe that crashes, and a
 * handler that always crashes spends a bounded number of attempts, not the queue.
 */

const dir = mkdtempSync(join(tmpdir(), 'tidepool-breaker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A process slot whose every process starts, then dies (exit code 1) as soon as it is given
 * its task, as a handler that exits at load would. Answers come a microtask later, as from a
 * real driver; `runs` counts the attempts handed to a process.
 */
function crashingProcesses() {
  const counter = { runs: 0 };
  let pid = 10_000_000;
  const logic = fromCallback<ProcessCommand, ProcessInput>(({ sendBack, receive }) => {
    let gone = false;
    const later = (fn: () => void) => queueMicrotask(() => !gone && fn());
    later(() => sendBack({ type: 'proc.ready', pid: pid++ }));
    receive((command) => {
      if (command.type === 'proc.run') {
        counter.runs++;
        later(() => sendBack({ type: 'proc.exit', code: 1, signal: null }));
      } else later(() => sendBack({ type: 'proc.exit', code: null, signal: command.type === 'proc.kill' ? 'SIGKILL' : 'SIGTERM' }));
    });
    return () => {
      gone = true;
    };
  });
  return { logic, counter };
}

describe('the breaker holds a crash storm (fake processes, simulated clock)', () => {
  it('1,000 queued tasks and a handler that always crashes: at most 17 attempts in the first minute, with the defaults', async () => {
    const clock = new SimulatedClock();
    const { logic, counter } = crashingProcesses();
    const concurrency = 4;
    const pool = createPool(
      { worker: { command: ['/bin/false'] }, concurrency, logLevel: 'silent' },
      { processActor: logic, clock },
    );
    const trips: BreakerTripped[] = [];
    pool.on('breaker:tripped', (trip) => trips.push(trip));
    await pool.start();
    const results: Promise<TaskResult>[] = [];
    for (let i = 0; i < 1_000; i++) results.push(pool.run({ id: `t${i}` }));
    results.forEach((r) => r.catch(() => {}));
    const flush = async () => {
      for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    await flush();
    for (let ms = 0; ms < 60_000; ms += 100) {
      clock.increment(100);
      await flush();
    }
    // With the defaults (maxCrashes 10, breakerCooldown 5 s, doubled per probe): the 11th crash
    // trips it with at most concurrency - 1 = 3 other attempts under way (14); then one probe
    // after each cooldown: at 5 s, 5 + 10 = 15 s, 15 + 20 = 35 s; the next is due at 75 s.
    const { maxCrashes, breakerCooldown } = DEFAULTS;
    expect(maxCrashes).toBe(10);
    expect(breakerCooldown).toBe(5_000);
    expect(counter.runs).toBeGreaterThanOrEqual(maxCrashes + 1 + 3);
    expect(counter.runs).toBeLessThanOrEqual(maxCrashes + 1 + (concurrency - 1) + 3);
    expect(trips.map((t) => t.cooldownMs)).toEqual([5_000, 10_000, 20_000, 40_000]);
    expect(trips.map((t) => t.trips)).toEqual([1, 2, 3, 4]);
    expect(pool.breaker).toMatchObject({ state: 'open', trips: 4, cooldownMs: 40_000 });
    expect(pool.breaker.retryAt).toBe(trips[3].retryAt);
    expect(pool.state).toBe('paused');
    expect(pool.pausedBy).toBe('breaker');
    // Nearly the whole queue is still there, waiting.
    expect(pool.queued).toBeGreaterThan(980);
    await pool.stop();
  });
});

describe('the breaker with real processes', () => {
  const { startPool } = trackPools({ logLevel: 'silent' });

  it('trips with a growing cooldown while the handler crashes, lets one probe through each time, and recovers once it is fixed', async () => {
    const marker = join(dir, 'crash');
    writeFileSync(marker, '');
    const pool = await startPool({
      worker: { module: fixture('crash-while-marker.js') },
      env: [`TIDEPOOL_TEST_MARKER=${marker}`],
      concurrency: 2,
      attempts: 1,
      maxCrashes: 0,
      crashWindow: 60_000,
      breakerCooldown: 200,
      breakerMaxCooldown: 60_000,
    });
    const log: string[] = [];
    const trips: BreakerTripped[] = [];
    pool.on('breaker:tripped', (trip) => {
      trips.push(trip);
      log.push(`tripped ${trip.cooldownMs}`);
    });
    pool.on('breaker:half-open', () => log.push('half-open'));
    pool.on('breaker:closed', () => log.push('closed'));
    pool.on('attempt:start', ({ taskId }) => log.push(`start ${taskId}`));
    const results = Array.from({ length: 8 }, (_, i) => pool.run({ id: `t${i}` }));
    await until(() => trips.length === 3, 'three trips', 20_000);
    expect(pool.breaker).toMatchObject({ state: 'open', trips: 3, cooldownMs: 800 });
    expect(pool.pausedBy).toBe('breaker');
    // The handler is fixed: the next probe does not crash and the breaker closes.
    rmSync(marker);
    const outcomes = await Promise.all(results);
    expect(trips.map((t) => t.cooldownMs)).toEqual([200, 400, 800]);
    for (const trip of trips) expect(trip.retryAt).toBeGreaterThan(Date.now() - 60_000);
    // Between a half-open and what follows it, exactly one attempt starts: the probe.
    const afterHalfOpen = log.flatMap((entry, i) => (entry === 'half-open' ? [log.slice(i + 1, i + 3)] : []));
    expect(afterHalfOpen).toHaveLength(3);
    expect(afterHalfOpen.slice(0, 2).every(([first, second]) => first.startsWith('start') && second.startsWith('tripped'))).toBe(true);
    expect(afterHalfOpen[2]).toEqual([expect.stringMatching(/^start/), 'closed']);
    expect(pool.breaker).toMatchObject({ state: 'closed', trips: 3, retryAt: null });
    expect(pool.state).toBe('running');
    const crashed = outcomes.filter((o) => o.status === 'failed');
    // The first attempts (two at once) and two probes crashed; every other task resolved.
    expect(crashed.length).toBeLessThanOrEqual(4);
    expect(crashed.every((o) => o.status === 'failed' && o.error.kind === 'crash')).toBe(true);
    expect(outcomes.filter((o) => o.status === 'resolved').length).toBe(8 - crashed.length);
  });
});
