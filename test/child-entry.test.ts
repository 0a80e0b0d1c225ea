import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CANCEL_SIGNAL, MSG } from '../src/child/protocol.js';
import { fixture, until } from './helpers/procs.js';

/**
 * The module worker's entry (src/child/main.js) run by hand as the spawn host runs a
 * single-use worker: its `run` message is the whole of its stdin, its reply goes to fd 3.
 */

const ENTRY = fileURLToPath(new URL('../src/child/main.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tidepool-child-entry-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Whether the process's main thread is blocked reading (its stdin: a pipe or a socket). */
const reading = (pid: number): boolean => {
  try {
    return /pipe_read$|unix_stream_read/.test(readFileSync(`/proc/${pid}/wchan`, 'utf8'));
  } catch {
    return false;
  }
};

describe('a single-use module worker waiting for its task (a warm spare)', () => {
  // Its listeners are set before it blocks on stdin, so that setting them up is not paid
  // between the task's arrival and the handler's first line (docs/benchmarks.md, "Latency").
  it('is not killed by a cancel that comes before its task; the task it then reads is told it was cancelled', async () => {
    const file = join(dir, 'reason');
    const child = spawn(process.execPath, [ENTRY, fixture('abort-reason.js')], { stdio: ['pipe', 'ignore', 'inherit', 'pipe'] });
    let reply = '';
    const replied = new Promise<void>((resolve) => {
      child.stdio[3]!.on('data', (chunk: Buffer) => (reply += chunk.toString('utf8')));
      child.stdio[3]!.once('close', resolve);
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    await until(() => reading(child.pid!), 'the worker to wait on its stdin', 10_000);
    process.kill(child.pid!, CANCEL_SIGNAL);
    // Pending before the task is there to read: a default action would kill it at the read.
    const run = { k: MSG.RUN, task: { id: 't', params: { file } }, attempt: 1, taskId: 't', workerId: 'w', last: true, deadline: Date.now() + 60_000 };
    child.stdin!.end(JSON.stringify(run));
    const exit = await exited;
    expect(exit).toEqual({ code: 143, signal: null });
    expect(readFileSync(file, 'utf8')).toBe('the task was cancelled; the worker is terminating\n');
    await replied;
    expect(JSON.parse(reply)).toEqual({ k: MSG.RESULT, value: 'stopped' });
  });
});

describe('a single-use module worker whose handler does not print', () => {
  // Node makes process.stdout on first access, at ~3 ms for a pipe (it loads net): a worker
  // that made it at start paid that on every task.
  it('never makes process.stdout (net and tty are not loaded)', async () => {
    const child = spawn(process.execPath, [ENTRY, fixture('stdio-made.js')], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
    let reply = '';
    child.stdio[3]!.on('data', (chunk: Buffer) => (reply += chunk.toString('utf8')));
    const closed = new Promise<number | null>((resolve) => child.once('close', resolve));
    child.stdin!.end(JSON.stringify({ k: MSG.RUN, task: { id: 't' }, attempt: 1, taskId: 't', workerId: 'w', last: true, deadline: Date.now() + 60_000 }));
    expect(await closed).toBe(0);
    expect(JSON.parse(reply)).toEqual({ k: MSG.RESULT, value: [] });
  });
});
