import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { splitCommand } from '../src/cli/main.js';
import { trackChildren } from './helpers/children.js';
import { alive, childrenOf, descendantsOf, fixture, until } from './helpers/procs.js';

/** `tidepool run` end to end: the real bin, real processes, stdout parsed line by line. */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const EXAMPLES = fileURLToPath(new URL('../examples/', import.meta.url));

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  lines: Array<Record<string, unknown>>;
}

/** CLIs started by `tidepool()` and not yet exited. */
const running = trackChildren();

function tidepool(args: string[], input?: string, onSpawn?: (pid: number) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('spawn', () => onSpawn?.(child.pid!));
    child.on('close', (code, signal) => {
      const lines = stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      resolve({ code, signal, stdout, stderr, lines });
    });
    child.stdin.end(input ?? '');
  });
}

const byId = (run: Run) => Object.fromEntries(run.lines.map((l) => [l.id, l]));

describe('tidepool run', () => {
  it('runs the example tasks: one line per task, exit 1 when some failed', async () => {
    const run = await tidepool([
      'run',
      '--worker',
      `${EXAMPLES}handler.js`,
      `${EXAMPLES}tasks.jsonl`,
      '--retry-delay',
      '10',
      '--log-level',
      'silent',
    ]);
    expect(run.code).toBe(1);
    const out = byId(run);
    expect(Object.keys(out).sort()).toEqual(['bad-1', 'flaky-1', 'line:5', 'line:6', 'sum-1', 'sum-2']);
    expect(out['sum-1']).toMatchObject({ status: 'resolved', result: { sum: 6 }, attempts: 1 });
    expect(out['flaky-1']).toMatchObject({ status: 'resolved', attempts: 2 });
    expect(out['bad-1']).toMatchObject({ status: 'failed', error: { kind: 'error' }, attempts: 1 });
    // A task without an id is named after its line; so is a line that is not JSON.
    expect(out['line:5']).toMatchObject({ status: 'resolved', result: { sum: 0 } });
    expect(out['line:6']).toMatchObject({ status: 'failed', error: { kind: 'malformed' }, attempts: 0 });
    for (const line of run.lines) expect(typeof line.durationMs).toBe('number');
  });

  it('reads stdin, exits 0 when every task resolved', async () => {
    const run = await tidepool(['run', '-', '--command', 'cat', '--log-level', 'silent'], '{"id":"a"}\n\n{"id":"b","n":1}\n');
    expect(run.code).toBe(0);
    expect(byId(run)).toEqual({
      a: expect.objectContaining({ status: 'resolved', result: { id: 'a' } }),
      b: expect.objectContaining({ status: 'resolved', result: { id: 'b', n: 1 } }),
    });
  });

  it('fails lines that are JSON but not an object as malformed, and runs the rest', async () => {
    const input = '[1,2]\n"text"\n{"id":"ok"}\nnull\n';
    const run = await tidepool(['run', '--command', 'cat', '--log-level', 'silent'], input);
    expect(run.code).toBe(1);
    const out = byId(run);
    for (const id of ['line:1', 'line:2', 'line:4']) expect(out[id]).toMatchObject({ error: { kind: 'malformed' } });
    expect(out.ok).toMatchObject({ status: 'resolved' });
  });

  it('reports a timeout as a failed line', async () => {
    const run = await tidepool(
      ['run', '--worker', fixture('hang.js'), '--timeout', '300', '--kill-grace', '100', '--attempts', '1', '--log-level', 'silent'],
      '{"id":"h"}\n',
    );
    expect(run.code).toBe(1);
    expect(run.lines).toEqual([expect.objectContaining({ id: 'h', status: 'failed', error: expect.objectContaining({ kind: 'timeout' }) })]);
  });

  it('splits --command like a shell would, quotes included', async () => {
    expect(splitCommand(`sh -c 'echo "a b"; exit 0'`)).toEqual(['sh', '-c', 'echo "a b"; exit 0']);
    expect(splitCommand(`python3  "my job.py" --x=1`)).toEqual(['python3', 'my job.py', '--x=1']);
    const run = await tidepool(['run', '--command', `sh -c 'cat >/dev/null; echo "a b"'`, '--log-level', 'silent'], '{"id":"q"}\n');
    expect(run.lines[0]).toMatchObject({ id: 'q', result: 'a b\n' });
  });

  it('streams a large input: reading stops while READ_AHEAD tasks wait', async () => {
    // One worker that never finishes: the queue fills up, and the CLI must stop reading its
    // stdin instead of holding the whole input. Writes then stall on the full pipe.
    const child = spawn(process.execPath, [BIN, 'run', '--command', 'sleep 1000', '--concurrency', '1', '--log-level', 'silent'], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    // Writes still queued when the CLI is stopped below fail with EPIPE: expected.
    child.stdin.on('error', () => {});
    const line = `{"pad":"${'x'.repeat(80)}"}\n`;
    const chunk = line.repeat(1000); // ~90 KB: READ_AHEAD lines
    let written = 0;
    // Write until the pipe pushes back for good (or far more than READ_AHEAD lines went in).
    while (written < 60 * chunk.length) {
      const flushed = child.stdin.write(chunk);
      written += chunk.length;
      if (!flushed) {
        const drained = await Promise.race([
          new Promise((r) => child.stdin.once('drain', () => r(true))),
          new Promise((r) => setTimeout(() => r(false), 1_000)),
        ]);
        if (!drained) break;
      }
    }
    try {
      // Read ahead: READ_AHEAD lines in the queue, readline's and the pipe's buffers; nowhere
      // near the 5 MB a reader without backpressure takes in.
      expect(written).toBeLessThan(12 * chunk.length);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('stops on SIGTERM: exit 143, no worker left behind', async () => {
    let pid = 0;
    const workers = new Set<number>();
    const done = tidepool(['run', '--worker', fixture('hang.js'), '--log-level', 'silent'], '{"id":"x"}\n{"id":"y"}\n', (p) => (pid = p));
    // Wait until both workers run (children of the spawn host), then note them and signal.
    const started = () => childrenOf(pid).flatMap(childrenOf);
    while (started().length < 2) await new Promise((r) => setTimeout(r, 20));
    for (const w of descendantsOf(pid)) workers.add(w);
    process.kill(pid, 'SIGTERM');
    const run = await done;
    expect(run.code).toBe(143);
    expect(run.lines).toEqual([]);
    expect(alive(workers)).toEqual([]);
  });

  it('module workers and their grandchildren leave when the manager is SIGKILLed', async () => {
    let pid = 0;
    const dir = mkdtempSync(join(tmpdir(), 'tidepool-cli-'));
    const pidFiles = [join(dir, 'x.pid'), join(dir, 'y.pid')];
    const input = pidFiles.map((pidFile, i) => JSON.stringify({ id: `t${i}`, params: { pidFile } })).join('\n');
    const done = tidepool(['run', '--worker', fixture('hang.js'), '--log-level', 'silent'], input, (p) => (pid = p));
    while (!pidFiles.every((f) => existsSync(f) && readFileSync(f, 'utf8').endsWith('\n'))) {
      await new Promise((r) => setTimeout(r, 20));
    }
    // The spawn host, the keeper of each worker (Perl edition only), the two workers and their
    // grandchildren.
    const workers = [...new Set([...descendantsOf(pid), ...pidFiles.map((f) => Number(readFileSync(f, 'utf8')))])];
    expect(workers).toHaveLength(process.env.TIDEPOOL_SPAWN_HOST === 'node' ? 5 : 7);
    // No handler runs on SIGKILL: only the spawn host's closed stdin tells the workers.
    process.kill(pid, 'SIGKILL');
    const run = await done;
    expect(run.signal).toBe('SIGKILL');
    try {
      await until(() => alive(workers).length === 0, `workers ${workers} to leave`, 3_000);
    } finally {
      for (const w of alive(workers)) process.kill(w, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('command workers and their grandchildren die when the manager is SIGKILLed', async () => {
    let pid = 0;
    const dir = mkdtempSync(join(tmpdir(), 'tidepool-cli-'));
    const pids = join(dir, 'pids');
    // Each worker notes its own pid and its grandchild's, then hangs.
    const command = `sh -c 'echo $$ >> ${pids}; sleep 1000 & echo $! >> ${pids}; wait'`;
    const done = tidepool(['run', '--command', command, '--concurrency', '2', '--log-level', 'silent'], '{"id":"a"}\n{"id":"b"}\n', (p) => (pid = p));
    const noted = () => (existsSync(pids) ? readFileSync(pids, 'utf8').split('\n').filter(Boolean).map(Number) : []);
    await until(() => noted().length === 4, 'both workers and grandchildren to start');
    const workers = noted();
    expect(alive(workers)).toHaveLength(4);
    process.kill(pid, 'SIGKILL');
    expect((await done).signal).toBe('SIGKILL');
    try {
      // The spawn host sees its stdin close and kills every group it started.
      await until(() => alive(workers).length === 0, `workers ${workers} to die`, 3_000);
    } finally {
      for (const w of alive(workers)) process.kill(w, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('tidepool run: bad usage exits 2 naming the flag', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['no worker', ['run'], /--worker PATH or --command/],
    ['both kinds', ['run', '--worker', 'a.js', '--command', 'cat'], /a worker module or a command, not both \(--worker and --command\)/],
    ['zero concurrency', ['run', '--command', 'cat', '--concurrency', '0'], /--concurrency must be a positive integer/],
    ['text for a number', ['run', '--command', 'cat', '--timeout', 'soon'], /--timeout must be a whole number, got "soon"/],
    ['unknown flag', ['run', '--command', 'cat', '--turbo'], /Unknown option '--turbo'/],
    ['missing module', ['run', '--worker', '/nonexistent/handler.js'], /--worker is not a file: \/nonexistent\/handler.js/],
    ['bad log level', ['run', '--command', 'cat', '--log-level', 'loud'], /--log-level must be one of/],
    ['reuse with a command', ['run', '--command', 'cat', '--max-tasks-per-worker', '2'], /--max-tasks-per-worker must be 1 for a command worker/],
    ['spares above concurrency', ['run', '--command', 'cat', '--concurrency', '1', '--spares', '2'], /--spares must not exceed concurrency/],
    ['missing input file', ['run', '--command', 'cat', '/nonexistent/tasks.jsonl'], /cannot read \/nonexistent\/tasks.jsonl/],
    ['unknown command', ['launch'], /unknown command "launch"/],
  ];
  it.each(cases)('%s', async (_name, args, message) => {
    const run = await tidepool(args);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stdout).toBe('');
  });

  it('reads options from TIDEPOOL_* variables too', async () => {
    const child = await new Promise<Run>((resolve) => {
      const c = spawn(process.execPath, [BIN, 'run', '--command', 'cat'], {
        env: { ...process.env, TIDEPOOL_CONCURRENCY: '0' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      c.stderr.on('data', (d) => (stderr += d));
      c.on('close', (code, signal) => resolve({ code, signal, stdout: '', stderr, lines: [] }));
    });
    expect(child.code).toBe(2);
    // Named as it was given: the variable, not the flag.
    expect(child.stderr).toMatch(/TIDEPOOL_CONCURRENCY must be a positive integer/);
  });
});
