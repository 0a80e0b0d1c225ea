import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { topologyNames } from '../src/sources/amqp/topology.js';
import { AMQP_URL, closeConnectionsOf, trackQueues } from './helpers/broker.js';
import type { Broker } from './helpers/broker.js';
import { alive, descendantsOf, fixture, until } from './helpers/procs.js';
import { call, pollUntil, startServe, tempDirs, tidepoolOnce } from './helpers/serve.js';
import type { ServeChild } from './helpers/serve.js';

/**
 * `tidepool serve --amqp URL --queue NAME`: real serve children (bin/tidepool) on the real
 * broker, several on one queue. Each test stops its serve children itself before its queues are
 * deleted; every process they started must be gone from /proc (test/helpers/serve.ts checks).
 */

const exec = promisify(execFile);
const queues = trackQueues();
const temp = tempDirs();
let broker: Broker;
beforeAll(() => {
  broker = queues.broker();
});

const handler = ['--worker', fixture('host-mark.js')];
/** Ceiling of a test with several hosts (each waits for conditions, never for a time). */
const LONG = 240_000;

/** A serve host named `name` (TP_HOST in its workers' environment) on `queue`. */
function host(name: string, queue: string, args: string[] = []): Promise<ServeChild> {
  const state = join(temp.root, `state-${name}`);
  mkdirSync(state, { recursive: true });
  return startServe([...handler, '--amqp', AMQP_URL, '--queue', queue, '--env', `TP_HOST=${name}`, '--state-dir', state, '--retry-delay', '50', ...args]);
}

/** The marks in the test's folder: executions started, done (by host) and crashed, by task id. */
function marks(): { started: Map<string, number[]>; done: Map<string, string[]>; crashed: string[] } {
  const started = new Map<string, number[]>();
  const done = new Map<string, string[]>();
  const crashed: string[] = [];
  for (const name of readdirSync(temp.dir)) {
    const [kind, id, ...rest] = name.split('.');
    const task = decodeURIComponent(id!);
    if (kind === 'start') started.set(task, [...(started.get(task) ?? []), Number(rest[0])]);
    if (kind === 'done') done.set(task, [...(done.get(task) ?? []), rest[0]!]);
    if (kind === 'crash') crashed.push(task);
  }
  return { started, done, crashed };
}

/** The pids of the children the tasks started (params.child). */
const childPids = () => readdirSync(temp.dir).filter((n) => n.startsWith('child.')).map((n) => Number(n.split('.').at(-1)));

/** The parent of a process, from /proc (0 when it is gone). */
function parentOf(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/stat`, 'latin1').replace(/^.*\) /s, '').split(' ')[1]);
  } catch {
    return 0;
  }
}

async function publish(queue: string, ids: string[], ms: number): Promise<void> {
  for (const id of ids) await broker.publish(queue, { id, params: { dir: temp.dir, ms } });
}

/** SIGTERM (drain) and the exit. */
async function stop(serve: ServeChild): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  serve.child.kill('SIGTERM');
  return serve.exited;
}

/** Ready and consuming: `/readyz` is 200. */
const ready = (serve: ServeChild) => pollUntil(`${serve.url}/readyz`, (a) => a.status === 200, 'readyz 200', 60_000);

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

describe('tidepool serve --amqp: several hosts on one queue', () => {
  it('two hosts share the work; each answers GET /tasks/:id for the tasks it ran, and refuses POST /tasks (405)', async () => {
    const queue = queues.newQueue('serve-share');
    const a = await host('a', queue, ['--concurrency', '2']);
    const b = await host('b', queue, ['--concurrency', '2']);
    await Promise.all([ready(a), ready(b)]);
    const tasks = ids('t', 24);
    await publish(queue, tasks, 200);
    await until(() => tasks.every((id) => marks().done.has(id)), 'every task done', 60_000);
    const { done } = marks();
    const by = (name: string) => tasks.filter((id) => done.get(id)!.includes(name));
    expect(by('a').length, 'tasks host a ran').toBeGreaterThan(0);
    expect(by('b').length, 'tasks host b ran').toBeGreaterThan(0);
    const ranOnA = by('a')[0]!;
    const view = await pollUntil(`${a.url}/tasks/${ranOnA}`, (r) => r.status === 200 && r.json.status === 'resolved', `host a's outcome of ${ranOnA}`, 20_000);
    expect(view.json).toMatchObject({ id: ranOnA, status: 'resolved', attempts: 1 });
    expect((await call(`${a.url}/tasks/never-seen-here`)).status).toBe(404);
    const post = await call(`${a.url}/tasks`, { body: { id: 'x' } });
    expect(post.status).toBe(405);
    expect(post.json.message).toMatch(/RabbitMQ queue \(--amqp\).*tidepool enqueue/);
    expect(post.headers.get('allow')).toBe('');
    expect(await stop(a)).toEqual({ code: 0, signal: null });
    expect(await stop(b)).toEqual({ code: 0, signal: null });
    expect(await broker.count(queue)).toBe(0);
    expect(await broker.count(topologyNames(queue).dead)).toBe(0);
  }, LONG);

  it('kill -9 of a whole host (manager and spawn host) mid-batch: the other completes every task (none lost); nothing of it is left once a new host starts on its state dir', async () => {
    const queue = queues.newQueue('serve-kill');
    const a = await host('a', queue, ['--concurrency', '3']);
    const b = await host('b', queue, ['--concurrency', '2']);
    await Promise.all([ready(a), ready(b)]);
    const tasks = ids('k', 16);
    for (const id of tasks) await broker.publish(queue, { id, params: { dir: temp.dir, ms: 4000, child: 600_000 } });
    // Wait until host a runs tasks: its workers (below its spawn host) have left start marks.
    let onA: number[] = [];
    await until(
      () => {
        a.noteDescendants();
        b.noteDescendants();
        onA = [...marks().started.values()].flat().filter((pid) => a.seen.has(pid) && alive([pid]).length === 1);
        return onA.length > 0;
      },
      'host a to run tasks',
      60_000,
    );
    // The manager, its spawn host and whatever else holds the workers (the Perl edition's
    // keepers), at once: the workers running tasks are left behind as orphans, as after an OOM
    // kill of the host's cgroup, the case the ledger is for.
    const below = descendantsOf(a.pid);
    const left = below.filter((pid) => onA.includes(pid) || onA.includes(parentOf(pid)));
    for (const pid of [a.pid, ...below.filter((pid) => !left.includes(pid))]) process.kill(pid, 'SIGKILL');
    expect((await a.exited).signal).toBe('SIGKILL');
    // A module worker leaves when its pipe to the host closes; the child it started runs on.
    const orphans = alive(childPids());
    expect(orphans.length, "children of the killed host's workers still running").toBeGreaterThan(0);
    await until(() => tasks.every((id) => marks().done.has(id)), 'every task done by someone', 120_000);
    const { done } = marks();
    const lost = tasks.filter((id) => !done.has(id));
    const repeated = tasks.filter((id) => done.get(id)!.length > 1).map((id) => `${id}: ${done.get(id)!.join(', ')}`);
    console.log(`kill -9 of host a: ${orphans.length} child(ren) of its workers left running; lost ${lost.length}; tasks done more than once: ${repeated.length} ${JSON.stringify(repeated)}`);
    expect(lost).toEqual([]);
    // A new host on the killed one's state dir kills what its ledger names (orphans, if any)
    // before it starts; none of the killed host's workers may be left.
    const again = await host('a', queue, ['--concurrency', '1']);
    await until(() => alive([...onA, ...orphans]).length === 0, "the killed host's workers and their children to be gone", 20_000);
    expect(again.stderr.join('\n')).toMatch(new RegExp(`killed \\d+ process\\(es\\) left running by manager pid ${a.pid}`));
    expect(await stop(again)).toEqual({ code: 0, signal: null });
    expect(await stop(b)).toEqual({ code: 0, signal: null });
    expect(await broker.count(queue)).toBe(0);
  }, LONG);

  it("a breaker trip on one host moves its deliveries to the other host, which completes them", async () => {
    const queue = queues.newQueue('serve-breaker');
    // Host a's workers crash at once; its breaker trips at the second crash and stays open.
    const a = await host('a', queue, [
      '--concurrency', '2', '--env', 'TP_CRASH=1', '--max-crashes', '2', '--crash-window', '600000',
      '--breaker-cooldown', '600000', '--breaker-max-cooldown', '600000', '--attempts', '10',
    ]);
    const b = await host('b', queue, ['--concurrency', '2', '--attempts', '10']);
    await Promise.all([ready(a), ready(b)]);
    const tasks = ids('c', 12);
    await publish(queue, tasks, 100);
    const tripped = await pollUntil(`${a.url}/readyz`, (r) => r.json.pausedBy === 'breaker', "host a's breaker to trip", 60_000);
    expect(tripped.status).toBe(503);
    expect(tripped.json.reasons.join('; ')).toMatch(/crash breaker/);
    await until(() => tasks.every((id) => marks().done.has(id)), 'every task done', 60_000);
    const { done, crashed } = marks();
    expect(crashed.length, 'attempts that crashed on host a').toBeGreaterThan(0);
    for (const id of tasks) expect(done.get(id), id).toEqual(['b']);
    // Host a holds nothing while its breaker is open: every delivery went back to the queue.
    const after = await call(`${a.url}/readyz`);
    expect(after.json).toMatchObject({ pausedBy: 'breaker', inFlight: 0 });
    expect(await stop(a)).toEqual({ code: 0, signal: null });
    expect(await stop(b)).toEqual({ code: 0, signal: null });
    expect(await broker.count(queue)).toBe(0);
    expect(await broker.count(topologyNames(queue).dead)).toBe(0);
  }, LONG);
});

describe('tidepool serve --amqp: drain on SIGTERM', () => {
  it('hosts past their drain timeout exit 0, leave nothing running, and requeue what did not finish (never acked)', async () => {
    const queue = queues.newQueue('serve-drain');
    const args = ['--concurrency', '2', '--drain-timeout', '500', '--kill-grace', '500'];
    const a = await host('a', queue, args);
    const b = await host('b', queue, args);
    await Promise.all([ready(a), ready(b)]);
    const tasks = ids('d', 4);
    await publish(queue, tasks, 600_000);
    await until(() => marks().started.size === 4, 'all four tasks to start', 60_000);
    a.noteDescendants();
    b.noteDescendants();
    const seen = [...a.seen, ...b.seen];
    const [ea, eb] = await Promise.all([stop(a), stop(b)]);
    expect(ea).toEqual({ code: 0, signal: null });
    expect(eb).toEqual({ code: 0, signal: null });
    await until(() => alive(seen).length === 0, 'every process of both hosts to be gone', 10_000);
    expect(marks().done.size).toBe(0);
    // Every delivery is back, ready; none dead-lettered.
    let back = await broker.count(queue);
    for (const deadline = Date.now() + 10_000; back !== 4 && Date.now() < deadline; back = await broker.count(queue)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(back, 'messages ready in the queue').toBe(4);
    expect(await broker.count(topologyNames(queue).dead)).toBe(0);
  }, LONG);

  it('a host stops consuming at once and lets running tasks finish within the drain timeout (acked), exiting 0', async () => {
    const queue = queues.newQueue('serve-drain-finish');
    const a = await host('a', queue, ['--concurrency', '2', '--drain-timeout', '60000']);
    await ready(a);
    await publish(queue, ['f-0', 'f-1'], 2000);
    await until(() => marks().started.size === 2, 'both tasks to start', 60_000);
    // A third task waits in the queue: a host still consuming would take it once one ends.
    await publish(queue, ['f-2'], 0);
    expect(await stop(a)).toEqual({ code: 0, signal: null });
    const { done } = marks();
    expect([...done.keys()].sort()).toEqual(['f-0', 'f-1']);
    expect(await broker.count(queue)).toBe(1);
    expect(a.stderr.join('\n')).toMatch(/draining: every running task ended/);
  }, LONG);
});

describe('tidepool serve --amqp: broker connection', () => {
  it('an unreachable broker at start: exit 1 naming the URL without its password', async () => {
    const password = `Pw-${process.pid}-unreachable`;
    const run = await tidepoolOnce([...['serve', '--http-port', '0'], ...handler, '--amqp', `amqp://someone:${password}@127.0.0.1:1`, '--queue', 'q', '--state-dir', 'none']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/cannot connect to RabbitMQ at amqp:\/\/someone@127\.0\.0\.1:1: /);
    expect(run.stderr).not.toContain(password);
    // The same from the variables, and from a config file (flags win over both).
    const fromEnv = await tidepoolOnce(['serve', ...handler, '--state-dir', 'none'], { AMQP_URL: `amqp://someone:${password}@127.0.0.1:1`, TIDEPOOL_QUEUE: 'q' });
    expect(fromEnv.code).toBe(1);
    expect(fromEnv.stderr).toMatch(/cannot connect to RabbitMQ at amqp:\/\/someone@127\.0\.0\.1:1: /);
    const config = join(temp.root, 'tidepool.json');
    writeFileSync(config, JSON.stringify({ amqp: `amqp://other:${password}@127.0.0.1:2`, queue: 'q', queueType: 'classic' }));
    const fromFile = await tidepoolOnce(['serve', ...handler, '--state-dir', 'none', '--config', config], { AMQP_URL: '' });
    expect(fromFile.code).toBe(1);
    expect(fromFile.stderr).toMatch(/cannot connect to RabbitMQ at amqp:\/\/other@127\.0\.0\.1:2: /);
    const flagWins = await tidepoolOnce(['serve', ...handler, '--state-dir', 'none', '--config', config, '--amqp', `amqp://flag:${password}@127.0.0.1:3`]);
    expect(flagWins.stderr).toMatch(/cannot connect to RabbitMQ at amqp:\/\/flag@127\.0\.0\.1:3: /);
    for (const out of [fromEnv, fromFile, flagWins]) expect(out.stderr).not.toContain(password);
  }, LONG);

  it('bad amqp flags are usage errors (exit 2) naming the flag or variable', async () => {
    const noQueue = await tidepoolOnce(['serve', ...handler, '--amqp', AMQP_URL]);
    expect(noQueue.code).toBe(2);
    expect(noQueue.stderr).toMatch(/--amqp needs --queue NAME/);
    const noUrl = await tidepoolOnce(['serve', ...handler, '--queue', 'q'], { AMQP_URL: '' });
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toMatch(/--queue needs --amqp URL/);
    const type = await tidepoolOnce(['serve', ...handler, '--queue', 'q', '--queue-type', 'stream'], { AMQP_URL });
    expect(type.code).toBe(2);
    expect(type.stderr).toMatch(/--queue-type must be "quorum" or "classic"/);
    const url = await tidepoolOnce(['serve', ...handler, '--queue', 'q'], { AMQP_URL: 'http://u:p@h' });
    expect(url.code).toBe(2);
    expect(url.stderr).toMatch(/AMQP_URL must be an amqp:\/\/ or amqps:\/\/ URL/);
    const help = await tidepoolOnce(['serve', '--help']);
    expect(help.stdout).toMatch(/--amqp URL +.*AMQP_URL/);
    expect(help.stdout).toMatch(/--queue-type TYPE +.*\(default: quorum\)/);
  }, LONG);

  it('/readyz is 503 with a reason while the broker refuses it, 200 again once it is back; the password is in no log line nor answer', async () => {
    const user = `tp-test-user-${process.pid}-${Date.now().toString(36)}`;
    const password = `S3cretPw-${Math.random().toString(36).slice(2)}`;
    await exec('rabbitmqctl', ['-q', 'add_user', user, password]);
    try {
      await exec('rabbitmqctl', ['-q', 'set_permissions', '-p', '/', user, '.*', '.*', '.*']);
      const queue = queues.newQueue('serve-ready');
      const url = `amqp://${user}:${password}@127.0.0.1:5672`;
      const state = join(temp.root, 'state');
      mkdirSync(state);
      const serve = await startServe([...handler, '--amqp', url, '--queue', queue, '--state-dir', state, '--log-level', 'trace', '--concurrency', '1']);
      const bodies: string[] = [];
      bodies.push((await ready(serve)).text);
      await publish(queue, ['r-0'], 0);
      await until(() => marks().done.has('r-0'), 'the task to run', 30_000);
      // The broker refuses the user from now on: the connection is closed and cannot come back.
      await exec('rabbitmqctl', ['-q', 'clear_permissions', '-p', '/', user]);
      expect(await closeConnectionsOf(queue)).toBeGreaterThan(0);
      const down = await pollUntil(`${serve.url}/readyz`, (a) => a.status === 503, 'readyz 503', 30_000);
      bodies.push(down.text);
      expect(down.json.reasons.join('; ')).toMatch(new RegExp(`not connected to the broker at amqp://${user}@127\\.0\\.0\\.1:5672; reconnecting \\(lost: `));
      await exec('rabbitmqctl', ['-q', 'set_permissions', '-p', '/', user, '.*', '.*', '.*']);
      bodies.push((await ready(serve)).text);
      await publish(queue, ['r-1'], 0);
      await until(() => marks().done.has('r-1'), 'a task after the reconnect to run', 30_000);
      expect(await stop(serve)).toEqual({ code: 0, signal: null });
      const logs = serve.stderr.join('\n');
      expect(logs).toMatch(/lost the RabbitMQ connection/);
      expect(logs).toMatch(/connected to RabbitMQ again/);
      expect(logs, 'the log names the broker without its password').toContain(`amqp://${user}@127.0.0.1:5672`);
      expect(logs).not.toContain(password);
      for (const body of bodies) expect(body).not.toContain(password);
    } finally {
      await exec('rabbitmqctl', ['-q', 'delete_user', user]);
    }
  }, LONG);
});
