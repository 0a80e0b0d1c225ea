import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createPool, resolveOptions } from '../src/index.js';
import type { Pool } from '../src/index.js';
import { COMPACT_SLACK, Ledger, REMOVAL_DELAY, readLedger } from '../src/process/ledger.js';
import type { Proc } from './helpers/procs.js';
import { fixture, isAlive, killStill, noted, statOf, stillRunning, until } from './helpers/procs.js';

/**
 * The ledger of live workers (docs/containment.md, "A manager killed with its spawn host"):
 * real managers (`bin/tidepool run`) killed by SIGKILL with their spawn host, real orphans, a
 * new manager on the same state directory; every check in /proc by pid and start time.
 */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const ESCAPE = fixture('escape.sh');
const root = mkdtempSync(join(tmpdir(), 'tidepool-ledger-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Managers started by a test, and every process a test noted: killed if still there after it. */
const managers: ChildProcess[] = [];
const procs: Proc[] = [];
const pools: Pool[] = [];
afterEach(async () => {
  for (const pool of pools.splice(0)) await pool.stop().catch(() => {});
  for (const child of managers.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  killStill(procs.splice(0));
});

let seq = 0;
/** A fresh directory under the test's own. */
function fresh(name: string): string {
  const path = join(root, `${name}-${++seq}`);
  mkdirSync(path);
  return path;
}

const ledgers = (dir: string) => readdirSync(dir).filter((name) => name.endsWith('.ledger'));

/** The entries of the one ledger in `dir` (none while there is no file). */
function entriesIn(dir: string) {
  const [file] = ledgers(dir);
  return file === undefined ? [] : readLedger(readFileSync(join(dir, file), 'latin1')).entries;
}

/** Processes as the ledger names them, to be checked in /proc. */
const asProcs = (entries: { pid: number; start: string }[]): Proc[] => entries.map(({ pid, start }) => ({ pid, start }));

/** TIDEPOOL_* settings of the caller stay out, but for the edition asked for. */
function cliEnv(edition?: 'perl' | 'node'): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('TIDEPOOL_') && name !== 'TIDEPOOL_SPAWN_HOST') delete env[name];
  if (edition) env.TIDEPOOL_SPAWN_HOST = edition;
  return env;
}

/**
 * A `tidepool run` of `tasks` commands that start children and stay (escape.sh `stay`: one
 * child in the worker's group, one that calls setsid), in a process group of its own (so that
 * it can be killed whole), on `stateDir`. Resolves once every worker's children run and the
 * ledger lists every worker: with the processes to watch (workers and their children).
 */
async function managerWithOrphans(stateDir: string, tasks: number, edition?: 'perl' | 'node') {
  const notes = join(fresh('notes'), 'procs');
  const input = join(stateDir, '..', `tasks-${++seq}.jsonl`);
  writeFileSync(input, '{}\n'.repeat(tasks));
  const child = spawn(
    process.execPath,
    [BIN, 'run', input, '--state-dir', stateDir, '--command', `sh ${ESCAPE} stay ${notes}`, '--concurrency', String(tasks), '--log-level', 'warn'],
    { env: cliEnv(edition), detached: true, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  managers.push(child);
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const readyLines = () => (existsSync(`${notes}.ready`) ? readFileSync(`${notes}.ready`, 'utf8').split('\n').filter(Boolean).length : 0);
  await until(() => readyLines() === tasks && noted(notes).length === 2 * tasks && entriesIn(stateDir).length === tasks, 'the workers and their children', 20_000).catch(
    (err: Error) => {
      throw new Error(`${err.message}; manager stderr: ${stderr}`);
    },
  );
  const watched = [...asProcs(entriesIn(stateDir)), ...noted(notes)];
  procs.push(...watched);
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return { child, watched, closed, ledger: join(stateDir, ledgers(stateDir)[0]!), stderr: () => stderr };
}

/** A second manager on `stateDir` that runs nothing: its start sweeps. Returns its log lines. */
function sweepingManager(stateDir: string) {
  const r = spawnSync(process.execPath, [BIN, 'run', '--state-dir', stateDir, '--command', 'cat', '--log-level', 'info'], {
    input: '',
    env: cliEnv(),
    encoding: 'utf8',
    timeout: 25_000,
  });
  expect(r.status, r.stderr).toBe(0);
  const lines = r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; deadManager?: number; killed?: number; entries?: number; level: number });
  return lines.filter((l) => l.deadManager !== undefined);
}

describe.each(['perl', 'node'] as const)('the %s spawn host: a manager killed with its spawn host', (edition) => {
  it('SIGKILL of the manager\'s process group leaves its workers running; a new manager on the state dir kills them, setsid children included', async () => {
    const stateDir = fresh('state');
    const m = await managerWithOrphans(stateDir, 2, edition);
    // The manager, its spawn host and (Perl) the keepers share the manager's group; the
    // workers lead their own.
    process.kill(-m.child.pid!, 'SIGKILL');
    await m.closed;
    // What the issue is about: without a sweep, all of it runs on (2 workers, 2 children each).
    expect(stillRunning(m.watched)).toHaveLength(6);
    expect(existsSync(m.ledger)).toBe(true);

    const swept = sweepingManager(stateDir);
    expect(swept).toMatchObject([{ deadManager: m.child.pid, entries: 2, killed: 6 }]);
    expect(swept[0]!.msg).toBe(`killed 6 process(es) left running by manager pid ${m.child.pid}, which died with its spawn host`);
    await until(() => stillRunning(m.watched).length === 0, 'the orphans to die', 5_000);
    // The dead manager's ledger is gone, and the sweeper's own (it ended cleanly).
    expect(readdirSync(stateDir)).toEqual([]);
  });
});

describe('the perl spawn host: keepers outlive a manager killed with its host', () => {
  it('SIGKILL of the manager and its host alone: the keepers kill their trees; the next manager finds nothing running', async () => {
    const stateDir = fresh('state');
    const m = await managerWithOrphans(stateDir, 2, 'perl');
    const host = Number(readFileSync(`/proc/${m.child.pid}/task/${m.child.pid}/children`, 'latin1').trim().split(/\s+/)[0]);
    expect(readFileSync(`/proc/${host}/cmdline`, 'latin1')).toContain('spawn-host.pl');
    process.kill(m.child.pid!, 'SIGKILL');
    process.kill(host, 'SIGKILL');
    await m.closed;
    // Each keeper asked for a signal at its host's death (PR_SET_PDEATHSIG).
    await until(() => stillRunning(m.watched).length === 0, 'the keepers to kill their trees', 5_000);
    expect(sweepingManager(stateDir)).toMatchObject([{ deadManager: m.child.pid, entries: 2, killed: 0 }]);
    expect(readdirSync(stateDir)).toEqual([]);
  });
});

/** A ledger file for a manager that is dead (a pid that has exited), listing `lines`. */
function deadManagersLedger(stateDir: string, lines: string[]): { file: string; pid: number } {
  const ns = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0];
  const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
  const dead = spawnSync('true');
  expect(isAlive(dead.pid!)).toBe(false);
  const file = join(stateDir, `${ns}-${dead.pid}-1-1.ledger`);
  writeFileSync(file, `tidepool ledger 1 boot=${boot}\n${lines.join('\n')}\n`);
  return { file, pid: dead.pid! };
}

/** A `sleep` in a group of its own, noted for cleanup. */
function sleeper(): Proc {
  const child = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' });
  const proc = { pid: child.pid!, start: statOf(child.pid!)!.start };
  procs.push(proc);
  return proc;
}

describe('what a sweep never touches', () => {
  it('an entry whose pid now names another process (another start time) is not killed; one that matches is', async () => {
    const stateDir = fresh('state');
    const reused = sleeper();
    const left = sleeper();
    const { file, pid } = deadManagersLedger(stateDir, [
      `+ ${reused.pid} ${Number(reused.start) + 1} ${reused.pid} - -`,
      `+ ${left.pid} ${left.start} ${left.pid} - -`,
    ]);
    expect(sweepingManager(stateDir)).toMatchObject([{ deadManager: pid, entries: 2, killed: 1 }]);
    await until(() => !isAlive(left.pid), 'the listed process to die');
    expect(stillRunning([reused])).toEqual([reused]);
    expect(existsSync(file)).toBe(false);
  });

  it("another user's ledger file is not obeyed; a state directory others can write is refused", () => {
    const stateDir = fresh('state');
    const victim = sleeper();
    const { file } = deadManagersLedger(stateDir, [`+ ${victim.pid} ${victim.start} ${victim.pid} - -`]);
    // As another user would have left it (the test runs as root, which can give it away).
    chownSync(file, 65534, 65534);
    expect(sweepingManager(stateDir)).toEqual([]);
    expect(stillRunning([victim])).toEqual([victim]);
    process.kill(victim.pid, 'SIGKILL');
    chmodSync(stateDir, 0o777);
    expect(() => resolveOptions({ worker: { command: ['true'] }, stateDir })).toThrow(/stateDir can be written by other users/);
  });

  it('entries removed later in the file, a torn last line, and a ledger from another boot: none is killed', () => {
    const stateDir = fresh('state');
    const reaped = sleeper();
    const torn = sleeper();
    deadManagersLedger(stateDir, [`+ ${reaped.pid} ${reaped.start} ${reaped.pid} - -`, `- ${reaped.pid}`, `+ ${torn.pid} ${torn.start}`]);
    const other = join(stateDir, `${/\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0]}-${spawnSync('true').pid}-1-2.ledger`);
    writeFileSync(other, `tidepool ledger 1 boot=00000000-not-this-boot\n+ ${torn.pid} ${torn.start} ${torn.pid} - -\n`);
    const swept = sweepingManager(stateDir);
    expect(swept.map((r) => r.killed)).toEqual([0, 0]);
    expect(stillRunning([reaped, torn])).toEqual([reaped, torn]);
    expect(readdirSync(stateDir)).toEqual([]);
  });

  it('a live manager\'s ledger: neither read nor changed, its workers left alone', async () => {
    const stateDir = fresh('state');
    const m = await managerWithOrphans(stateDir, 1);
    const before = readFileSync(m.ledger, 'latin1');
    expect(sweepingManager(stateDir)).toEqual([]);
    expect(readFileSync(m.ledger, 'latin1')).toBe(before);
    expect(stillRunning(m.watched)).toHaveLength(3);
    // Stopped cleanly, it kills its workers and removes its own ledger.
    m.child.kill('SIGTERM');
    await m.closed;
    expect(m.child.exitCode).toBe(143);
    await until(() => stillRunning(m.watched).length === 0, 'the workers to die');
    expect(readdirSync(stateDir)).toEqual([]);
  });
});

describe('--state-dir', () => {
  const file = join(root, 'a-file');
  writeFileSync(file, '');
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ['missing', ['--state-dir', join(root, 'missing')], {}, /^tidepool: --state-dir is not a directory: .*missing\n$/],
    ['a file', ['--state-dir', file], {}, /^tidepool: --state-dir is not a directory: .*a-file\n$/],
    // sysfs takes no new file, not even from root.
    ['not writable', ['--state-dir', '/sys'], {}, /^tidepool: --state-dir (cannot be written: EACCES|is not writable)/],
    ['missing, from its variable', [], { TIDEPOOL_STATE_DIR: join(root, 'missing') }, /^tidepool: TIDEPOOL_STATE_DIR is not a directory: /],
  ];
  it.each(cases)('%s: exit 2 naming it; nothing runs', (_name, args, env, message) => {
    const cwd = fresh('cwd');
    const r = spawnSync(process.execPath, [BIN, 'run', '--command', 'touch ran', ...args], { cwd, input: '{}\n', env: { ...cliEnv(), ...env }, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
    expect(existsSync(join(cwd, 'ran'))).toBe(false);
  });

  it('by default: $XDG_RUNTIME_DIR/tidepool, made private, empty after a clean run; "none": no ledger at all', () => {
    const runtime = fresh('runtime');
    const run = (args: string[]) =>
      spawnSync(process.execPath, [BIN, 'run', '--command', 'cat', ...args], { input: '{}\n{}\n', env: { ...cliEnv(), XDG_RUNTIME_DIR: runtime }, encoding: 'utf8' });
    expect(run(['--state-dir', 'none']).status).toBe(0);
    expect(existsSync(join(runtime, 'tidepool'))).toBe(false);
    expect(run([]).status).toBe(0);
    expect(statSync(join(runtime, 'tidepool')).mode & 0o777).toBe(0o700);
    expect(readdirSync(join(runtime, 'tidepool'))).toEqual([]);
    // Another user could plant a ledger naming this user's processes there: refused.
    chmodSync(join(runtime, 'tidepool'), 0o777);
    const refused = run([]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/^tidepool: the default state directory .*tidepool can be written by other users; give --state-dir DIR/);
  });
});

describe('the ledger file', () => {
  const silent = pino({ level: 'silent' });

  it('lists each live worker with its start time (and its keeper\'s), and is gone once the pool has stopped', async () => {
    for (const edition of ['perl', 'node'] as const) {
      const stateDir = fresh('state');
      const pool = createPool({ worker: { command: ['sh', '-c', 'cat >/dev/null; sleep 30'] }, stateDir, logLevel: 'silent', concurrency: 1 }, { spawnHost: edition });
      pools.push(pool);
      const spawned = new Promise<number>((resolve) => pool.once('worker:spawned', ({ pid }) => resolve(pid)));
      await pool.start();
      void pool.run({}).catch(() => {});
      const pid = await spawned;
      procs.push({ pid, start: statOf(pid)!.start });
      await until(() => entriesIn(stateDir).length === 1, 'the worker in the ledger');
      const stat = statOf(pid)!;
      const keeper = edition === 'perl' ? { pid: stat.ppid, start: statOf(stat.ppid)!.start } : null;
      expect(entriesIn(stateDir)).toEqual([{ pid, start: stat.start, pgid: pid, keeper }]);
      await pool.stop();
      expect(readdirSync(stateDir)).toEqual([]);
    }
  });

  it('writes an entry at once; its removal rides with the next entry, or goes within REMOVAL_DELAY', async () => {
    const stateDir = fresh('state');
    const ledger = new Ledger(stateDir, silent);
    ledger.open();
    const entry = (pid: number) => ({ pid, start: '42', pgid: pid, keeper: null });
    const listed = () => readLedger(readFileSync(ledger.path!, 'latin1')).entries.map((e) => e.pid);
    ledger.add(entry(1));
    await until(() => listed().length === 1, 'the entry');
    ledger.remove(1);
    ledger.add(entry(2));
    await until(() => listed().join() === '2', 'the removal with the next entry');
    ledger.remove(2);
    await until(() => listed().length === 0, 'the removal on its own', REMOVAL_DELAY + 5_000);
    await ledger.close();
    expect(readdirSync(stateDir)).toEqual([]);
  });

  it('stays bounded: rewritten from the live entries past twice their number plus COMPACT_SLACK lines', async () => {
    const stateDir = fresh('state');
    const ledger = new Ledger(stateDir, silent);
    ledger.open();
    const file = ledger.path!;
    let longest = 0;
    const entry = (pid: number) => ({ pid, start: String(pid * 7), pgid: pid, keeper: pid % 2 ? { pid: pid + 1, start: '9' } : null });
    let rewritten = 0;
    let previous = 0;
    for (let pid = 1000; pid < 4000; pid++) {
      ledger.add(entry(pid));
      if (pid >= 1003) ledger.remove(pid - 3);
      await ledger.flush();
      const lines = readFileSync(file, 'latin1').split('\n').length - 2;
      if (lines < previous) rewritten++;
      previous = lines;
      longest = Math.max(longest, lines);
    }
    expect(rewritten).toBeGreaterThan(1);
    expect(longest).toBeLessThanOrEqual(2 * 3 + COMPACT_SLACK);
    expect(readLedger(readFileSync(file, 'latin1')).entries).toEqual([entry(3997), entry(3998), entry(3999)]);
    // Closed with workers still listed, it stays for the next manager's sweep.
    await ledger.close();
    expect(ledgers(stateDir)).toHaveLength(1);
  });
});

describe('the node spawn host killed alone', () => {
  it('with a ledger, the pool kills the workers its dead host left (they would outlive it otherwise)', async () => {
    const stateDir = fresh('state');
    const notes = join(fresh('notes'), 'procs');
    const pool = createPool({ worker: { command: ['sh', ESCAPE, 'stay', notes] }, stateDir, logLevel: 'silent', attempts: 1, concurrency: 1 }, { spawnHost: 'node' });
    pools.push(pool);
    await pool.start();
    const result = pool.run({});
    await until(() => existsSync(`${notes}.ready`) && entriesIn(stateDir).length === 1, 'the worker and its children', 10_000);
    const [worker] = entriesIn(stateDir);
    const watched = [...asProcs([worker!]), ...noted(notes)];
    procs.push(...watched);
    // The worker's parent is the Node host itself.
    process.kill(statOf(worker!.pid)!.ppid, 'SIGKILL');
    expect(await result).toMatchObject({ status: 'failed', error: { kind: 'crash' } });
    await until(() => stillRunning(watched).length === 0, 'the dead host\'s workers to die', 5_000);
  });
});
