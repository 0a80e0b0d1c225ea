import { describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { InspectionEvent } from 'xstate';
import { LiveView, RECENT_OUTCOMES, REAPED_KEPT } from '../src/serve/live.js';
import type { LiveMessage, WorkerView } from '../src/serve/live.js';
import { trackPools } from './helpers/pools.js';
import { until } from './helpers/procs.js';

/**
 * The dashboard's live view over a real pool: what it holds stays bounded however many
 * workers come and go, and a page that applies its messages ends where a fresh snapshot is.
 */

describe('the live view', () => {
  const { track } = trackPools({});

  it('stays bounded over 1,000 single-use workers and agrees with a fresh snapshot', async () => {
    const live = new LiveView();
    const pool = track(createPool({ worker: { command: ['cat'] }, concurrency: 4, logLevel: 'warn', inspect: (e: InspectionEvent) => live.observer.next!(e) }));
    live.attach(pool);
    // A page: applies the snapshot, then every update, as page.js does.
    const page = new Map<string, WorkerView>();
    let outcomes = 0;
    let largest = 0;
    let messages = 0;
    const apply = (m: LiveMessage) => {
      messages++;
      largest = Math.max(largest, JSON.stringify(m).length);
      if (m.type === 'snapshot') {
        page.clear();
        for (const w of m.workers) page.set(w.id, w);
        return;
      }
      for (const w of m.workers) page.set(w.id, w);
      for (const id of m.gone) page.delete(id);
      outcomes += m.outcomes.length;
    };
    apply(live.snapshot());
    live.subscribe(apply);
    await pool.start();
    let maxHeld = 0;
    const tick = setInterval(() => (maxHeld = Math.max(maxHeld, live.size)), 5);
    const results = await Promise.all(Array.from({ length: 1_000 }, (_, i) => pool.run({ id: `t${i}` })));
    clearInterval(tick);
    expect(results.every((r) => r.status === 'resolved')).toBe(true);
    // Every worker reaped, and the view never held more than the live ones and the lingering reaped.
    expect(maxHeld).toBeLessThanOrEqual(4 + REAPED_KEPT);
    const snapshot = live.snapshot();
    expect(snapshot.recent).toHaveLength(RECENT_OUTCOMES);
    expect(snapshot.pool.outcomes).toEqual({ resolved: 1_000 });
    expect(snapshot.pool.spawned).toBe(1_000);
    expect(snapshot.pool.reaped).toBe(1_000);
    // Coalesced: far fewer messages than events, none of them large.
    expect(messages).toBeLessThan(1_000);
    expect(largest).toBeLessThan(200_000);
    // The page converges on what a fresh snapshot says (an update is at most a tick behind).
    const same = () => {
      const fresh = live.snapshot().workers.map((w) => w.id);
      return fresh.length === page.size && fresh.every((id) => page.has(id));
    };
    await until(same, 'the page to agree with a fresh snapshot', 10_000);
    for (const w of page.values()) expect(w.state).toBe('reaped');
    expect(outcomes).toBeGreaterThan(0);
    live.close();
  }, 120_000);
});
