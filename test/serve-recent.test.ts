import { describe, expect, it } from 'vitest';
import { RecentTasks } from '../src/serve/index.js';
import type { TaskResult } from '../src/index.js';

/** The recent-task registry of the service: what GET /tasks/:id answers, in bounded memory. */

const resolved = (id: string): TaskResult => ({ id, status: 'resolved', result: id, attempts: 1, durationMs: 1 });
const none = () => undefined;

describe('RecentTasks', () => {
  it('follows a task from queued to running (with progress) to a retry and its final outcome', () => {
    const recent = new RecentTasks(10);
    recent.accepted('a', 1_000);
    expect(recent.view('a', none)).toEqual({ id: 'a', status: 'queued', attempts: 0 });
    expect(recent.started('a', 1, 'worker.1', 42, 1_250)).toBe(250);
    expect(recent.view('a', (id) => ({ of: id }))).toEqual({ id: 'a', status: 'running', attempt: 1, workerId: 'worker.1', pid: 42, progress: { of: 'a' } });
    recent.retrying('a', 1);
    expect(recent.view('a', none)).toEqual({ id: 'a', status: 'queued', attempts: 1 });
    // Only a first attempt's wait is the queue wait.
    expect(recent.started('a', 2, 'worker.2', 43, 9_000)).toBeNull();
    expect(recent.view('a', none)).toMatchObject({ status: 'running', attempt: 2, progress: null });
    recent.ended(resolved('a'));
    expect(recent.view('a', none)).toEqual(resolved('a'));
    expect(recent.has('a')).toBe(false);
  });

  it('keeps at most maxRecent final outcomes, the oldest forgotten first, however many tasks pass', () => {
    const recent = new RecentTasks(100);
    let most = 0;
    for (let i = 0; i < 100_000; i++) {
      recent.accepted(`t${i}`);
      recent.ended(resolved(`t${i}`));
      most = Math.max(most, recent.kept + recent.inFlight);
    }
    expect(most).toBe(100);
    expect(recent.kept).toBe(100);
    expect(recent.inFlight).toBe(0);
    expect(recent.view('t99899', none)).toBeUndefined();
    expect(recent.view('t99900', none)).toEqual(resolved('t99900'));
    expect(recent.view('t99999', none)).toEqual(resolved('t99999'));
  });

  it('forgets a task the service stopped before it ended, and a final one sent again is in flight anew', () => {
    const recent = new RecentTasks(0);
    recent.accepted('gone');
    recent.dropped('gone');
    expect(recent.view('gone', none)).toBeUndefined();
    recent.accepted('kept');
    recent.ended(resolved('kept'));
    // maxRecent 0: nothing final is kept.
    expect(recent.view('kept', none)).toBeUndefined();
    const two = new RecentTasks(5);
    two.accepted('again');
    two.ended(resolved('again'));
    two.accepted('again');
    expect(two.view('again', none)).toEqual({ id: 'again', status: 'queued', attempts: 0 });
    expect(two.kept).toBe(0);
  });
});
