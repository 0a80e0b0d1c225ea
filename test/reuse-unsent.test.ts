import { readFileSync, readlinkSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { AttemptStart, WorkerReport } from '../src/index.js';
import { trackPools } from './helpers/pools.js';
import { fixture, statOf, until } from './helpers/procs.js';

/**
 * A reused worker killed while idle, before the manager has heard of its death, is handed the
 * next task: the task never reaches it (its end of the channel is closed when the task is
 * written), so it is not an attempt: the delivery goes back and runs on a new worker. The
 * spawn host is stopped (SIGSTOP) for the window, so that the manager cannot hear of the
 * death before the task is written: the race the test needs, made certain.
 */

const { startPool } = trackPools({ concurrency: 1, attempts: 1, maxTasksPerWorker: 50, killGrace: 1_000, logLevel: 'silent' });

/** Inodes of the Unix sockets that exist now (/proc/net/unix, column 7). */
const unixSocketInodes = () => new Set(readFileSync('/proc/net/unix', 'latin1').split('\n').slice(1).map((line) => line.trim().split(/\s+/)[6]));

/** The spawn host of a worker: its ancestor whose parent is this process (the manager). */
function hostOf(pid: number): number {
  for (let at = pid; ; ) {
    const stat = statOf(at);
    if (stat === null) throw new Error(`process ${at} is gone`);
    if (stat.ppid === process.pid) return at;
    if (stat.ppid <= 1) throw new Error(`worker ${pid} is not below this process`);
    at = stat.ppid;
  }
}

describe.each(['perl', 'node'] as const)('a reused worker killed while idle (%s spawn host)', (spawnHost) => {
  it('the next task handed to it is given back, not charged an attempt, and runs on a new worker', async () => {
    const pool = await startPool({ worker: { module: fixture('echo.js') } }, { spawnHost });
    const starts: AttemptStart[] = [];
    const reaped: WorkerReport[] = [];
    pool.on('attempt:start', (start) => starts.push(start));
    pool.on('worker:reaped', (report) => reaped.push(report));
    expect(await pool.run({ id: 'a', params: { n: 1 } })).toMatchObject({ status: 'resolved', attempts: 1 });
    const pid = starts[0].pid!;
    const host = hostOf(pid);
    // The worker's end of its channel (fd 3), by inode.
    const inode = /socket:\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/fd/3`))![1];
    process.kill(host, 'SIGSTOP');
    try {
      process.kill(pid, 'SIGKILL');
      // Its end of the channel is released: not when the process is a zombie or reaped, but
      // when the kernel's deferred close of a dying process's files has run (a jiffy or so
      // later), which /proc/net/unix shows.
      await until(() => !unixSocketInodes().has(inode), "the dead worker's end of its channel to be released");
      const b = pool.run({ id: 'b', params: { n: 2 } });
      // Handed to the dead worker (the manager has not heard), then given back.
      await until(() => starts.length === 2, "b's attempt on the dead worker");
      expect(starts[1]).toMatchObject({ taskId: 'b', attempt: 1, pid });
      await until(() => pool.workers.leaving === 1, `the dead worker to give b back and leave (workers: ${JSON.stringify(pool.workers)}, starts: ${JSON.stringify(starts)})`);
      process.kill(host, 'SIGCONT');
      expect(await b).toMatchObject({ status: 'resolved', attempts: 1 });
    } finally {
      process.kill(host, 'SIGCONT');
    }
    // b ran on a new worker; the dead one is reaped having served one task, not two.
    expect(starts).toHaveLength(3);
    expect(starts[2]).toMatchObject({ taskId: 'b', attempt: 1 });
    expect(starts[2].pid).not.toBe(pid);
    await until(() => reaped.some((r) => r.pid === pid), 'the dead worker to be reaped');
    expect(reaped.find((r) => r.pid === pid)).toMatchObject({ served: 1, signal: 'SIGKILL' });
  });
});
