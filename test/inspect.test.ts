import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import type { AddressInfo } from 'node:net';
import type { InspectionEvent } from 'xstate';
import { createInspector } from '@statelyai/inspect';
import { connectInspector } from '../src/cli/inspector.js';
import { createPool } from '../src/index.js';
import { fixture, until } from './helpers/procs.js';
import { trackPools } from './helpers/pools.js';

/**
 * `--inspect ws://...` and the library's `inspect`: the Stately inspector's protocol over a
 * real WebSocket (a local server standing in for the inspector), from a real run.
 */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));

interface Message {
  type: string;
  sessionId: string;
  parentId?: string;
  rootId?: string;
  name?: string;
  definition?: string;
  event?: { type: string };
  snapshot?: { value?: unknown; status?: string };
  _version?: string;
}

const servers: WebSocketServer[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    for (const client of server.clients) client.terminate();
    await new Promise((resolve) => server.close(resolve));
  }
});

async function inspectorServer(): Promise<{ url: string; messages: Message[] }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  servers.push(server);
  await new Promise((resolve) => server.once('listening', resolve));
  const messages: Message[] = [];
  server.on('connection', (socket) => socket.on('message', (data) => messages.push(JSON.parse(String(data)) as Message)));
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, messages };
}

/** Checks of one inspected run: the pool and each worker, in order, with parent ids. */
function checkStream(messages: Message[], workers: number) {
  const actors = messages.filter((m) => m.type === '@xstate.actor');
  const pool = actors.find((m) => m.name === 'pool');
  expect(pool, 'an @xstate.actor for the pool').toBeDefined();
  expect(pool!.parentId).toBeUndefined();
  expect(JSON.parse(pool!.definition!).id).toBe('pool');
  const workerActors = actors.filter((m) => m.definition && JSON.parse(m.definition).id === 'worker');
  expect(workerActors).toHaveLength(workers);
  for (const worker of workerActors) {
    // Each worker is shown as the pool's child, in the pool's system.
    expect(worker.parentId).toBe(pool!.sessionId);
    expect(worker.rootId).toBe(pool!.sessionId);
    const own = messages.filter((m) => m.sessionId === worker.sessionId);
    // Announced before anything else of it; its events and snapshots follow, in order.
    expect(own[0]).toBe(worker);
    const snapshots = own.filter((m) => m.type === '@xstate.snapshot');
    const events = own.filter((m) => m.type === '@xstate.event');
    expect(events.length).toBeGreaterThan(0);
    expect(snapshots.length).toBeGreaterThan(0);
    const states = snapshots.map((s) => JSON.stringify(s.snapshot!.value));
    expect(states[0]).toBe('"spawning"');
    expect(states).toContain('"running"');
    expect(states.at(-1)).toBe('"reaped"');
    expect(snapshots.at(-1)!.snapshot!.status).toBe('done');
  }
  // The pool's own events come after its announcement, and it saw each worker's report.
  const poolOwn = messages.filter((m) => m.sessionId === pool!.sessionId);
  expect(poolOwn[0]).toBe(pool);
  const poolEvents = poolOwn.filter((m) => m.type === '@xstate.event').map((m) => m.event!.type);
  expect(poolEvents.filter((t) => t === 'worker.done')).toHaveLength(workers);
  expect(messages.every((m) => typeof m._version === 'string')).toBe(true);
}

describe('inspection over WebSocket', () => {
  it('tidepool run --inspect streams the pool and every worker, as its children, in order', async () => {
    const { url, messages } = await inspectorServer();
    const child = spawn(process.execPath, [BIN, 'run', '--command', 'cat', '--concurrency', '2', '--inspect', url], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.end('{"id":"a"}\n{"id":"b"}\n{"id":"c"}\n');
    let stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code).toBe(0);
    expect(stdout.trim().split('\n')).toHaveLength(3);
    await until(() => messages.filter((m) => m.type === '@xstate.snapshot' && m.snapshot?.status === 'done').length >= 4, 'the last snapshots');
    checkStream(messages, 3);
  });

  it('a run whose inspector is not there still runs, says so, and exits', async () => {
    const { url } = await inspectorServer();
    const closed = url.replace(/:\d+$/, ':1');
    const child = spawn(process.execPath, [BIN, 'run', '--command', 'cat', '--inspect', closed], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.end('{"id":"a"}\n');
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code).toBe(0);
    expect(stderr).toContain('did not answer');
  });
});

describe('the protocol', () => {
  const { track } = trackPools({});

  it("--inspect's messages are @statelyai/inspect's own, field for field", async () => {
    // One run observed twice: by the CLI's inspector (to a local server) and by
    // @statelyai/inspect's createInspector, whose messages are the protocol.
    const { url, messages } = await inspectorServer();
    const ours = await connectInspector(url, 'test');
    const theirs: Message[] = [];
    const reference = createInspector({ send: (e: unknown) => void theirs.push(JSON.parse(JSON.stringify(e)) as Message), start() {}, stop() {} });
    const pool = track(
      createPool({
        worker: { module: fixture('echo.js') },
        concurrency: 2,
        inspect: (e: InspectionEvent) => {
          ours.inspect.next!(e);
          reference.inspect.next!(e);
        },
      }),
    );
    await pool.start();
    await Promise.all([pool.run({ id: 'x' }), pool.run({ id: 'y' })]);
    await pool.drain();
    await new Promise((r) => setTimeout(r, 50));
    await ours.stop();
    await until(() => messages.filter((m) => m.type === '@xstate.snapshot').length > 0, 'messages');
    // The same messages for the pool and the workers (ours leave out the workers' process actors).
    const shown = new Set(messages.filter((m) => m.type === '@xstate.actor').map((m) => m.sessionId));
    // createdAt and id differ by nature; an announcement's snapshot is read when it is made,
    // which createInspector does a timer later (a later state) and we at the actor's start.
    const normal = (m: Message) => {
      const { createdAt: _c, id: _i, ...rest } = m as Message & { createdAt?: string; id?: unknown };
      if (rest.type === '@xstate.actor') delete rest.snapshot;
      return JSON.parse(JSON.stringify(rest));
    };
    // Compared actor by actor: each actor's messages in order (an announcement goes out with
    // the actor's start here, so it may come after another actor's message than there).
    const reduce = (list: Message[]) => {
      const by: Record<string, unknown[]> = {};
      for (const m of list) if (shown.has(m.sessionId)) (by[m.sessionId] ??= []).push(normal(m));
      return by;
    };
    // The pool, its startup actor and the two workers.
    expect(shown.size).toBe(4);
    expect(reduce(messages)).toEqual(reduce(theirs));
  });
});

describe('the library inspect option', () => {
  const { track } = trackPools({});

  it('gives an observer every worker as a child of the pool', async () => {
    const seen: { type: string; id: string; parent: string | undefined; root: string }[] = [];
    const pool = track(
      createPool({
        worker: { module: fixture('echo.js') },
        concurrency: 2,
        inspect: (event: InspectionEvent) => {
          if (event.type === '@xstate.actor') {
            const ref = event.actorRef as unknown as { id: string; sessionId: string; _parent?: { sessionId: string } };
            seen.push({ type: event.type, id: ref.id, parent: ref._parent?.sessionId, root: event.rootId });
          }
        },
      }),
    );
    await pool.start();
    await Promise.all([pool.run({ id: 'x' }), pool.run({ id: 'y' })]);
    await pool.drain();
    const root = pool.actor.sessionId;
    const workers = seen.filter((s) => s.id.startsWith('worker.'));
    expect(workers).toHaveLength(2);
    for (const w of workers) {
      expect(w.parent).toBe(root);
      expect(w.root).toBe(root);
    }
  });
});
