import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { FrameReader, configurePayload, frame, parseConfigure } from '../src/child/host-protocol.js';
import { FRAME_SLICE, SpawnHost } from '../src/process/spawn-host.js';
import type { HostEdition, HostExit } from '../src/process/spawn-host.js';
import { alive, childrenOf, descendantsOf, statOf, until } from './helpers/procs.js';
import { isSpawnHost } from './helpers/process-table.js';
import { perTurn, turnCounter } from './helpers/turns.js';

/**
 * The spawn host on its own: its framing, and both editions (Perl and Node) driven directly
 * by the manager's side, with real processes.
 */

const dir = mkdtempSync(join(tmpdir(), 'tidepool-host-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('host frames', () => {
  it('reassembles frames cut anywhere, payloads with newlines and NULs included', () => {
    const bytes = Buffer.concat([
      frame('S 1', 'line one\nline two\0end'),
      frame('P 1 4242'),
      Buffer.from('X 1 0 - 0 4 3\nout\nerr'),
    ]);
    const reader = new FrameReader();
    const frames = [];
    for (const byte of bytes) frames.push(...reader.push(Buffer.from([byte])));
    expect(frames.map((f) => [f.kind, f.fields, f.payload.toString()])).toEqual([
      ['S', ['1', '21'], 'line one\nline two\0end'],
      ['P', ['1', '4242'], ''],
      ['X', ['1', '0', '-', '0', '4', '3'], 'out\nerr'],
    ]);
  });

  it('rejects a header whose length is not a number', () => {
    expect(() => new FrameReader().push(Buffer.from('S 1 many\n'))).toThrow(/bad frame header "S 1 many"/);
  });

  it('round-trips a configuration', () => {
    const spec = { argv: ['sh', '-c', 'echo "a b"=c'], env: { PATH: '/bin', EMPTY: '', EQ: 'x=y' }, cwd: '/tmp', uid: 0, gid: 7 };
    expect(parseConfigure(Buffer.from(configurePayload(spec)))).toEqual(spec);
    expect(parseConfigure(Buffer.from(configurePayload({ argv: ['cat'], env: {} })))).toEqual({ argv: ['cat'], env: {} });
  });
});

const logger = pino({ level: 'silent' });
let hosts: SpawnHost[] = [];
afterEach(() => {
  for (const host of hosts) host.close();
  hosts = [];
});

function open(argv: string[], edition: HostEdition, frameSlice?: number): SpawnHost {
  const host = new SpawnHost({ argv, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }, logger, edition, null, null, frameSlice);
  hosts.push(host);
  return host;
}

type Ending = { spawned: number | null; exit?: HostExit; error?: { message: string; code?: string } };

function run(host: SpawnHost, stdin?: string): { id: string; ending: Promise<Ending>; pid(): number | null } {
  let spawned: number | null = null;
  let id = '';
  const ending = new Promise<Ending>((resolve) => {
    id = host.spawn(
      {
        spawned: (pid) => (spawned = pid),
        spawnError: (error) => resolve({ spawned, error }),
        exit: (exit) => resolve({ spawned, exit }),
      },
      stdin,
    );
  });
  return { id, ending, pid: () => spawned };
}

describe.each(['perl', 'node'] as const)('the %s spawn host', (edition) => {
  it('reports stdout, the stderr tail and the exit status', async () => {
    const host = open(['sh', '-c', 'cat; echo oops >&2; exit 4'], edition);
    const { exit, spawned } = await run(host, 'hello').ending;
    expect(spawned).toBeGreaterThan(0);
    expect(exit).toEqual({ code: 4, signal: null, stdout: 'hello', stderr: 'oops', overflow: false, memory: false });
  });

  it(`says at start how it holds a worker's tree (${edition === 'perl' ? 'subreaper' : 'proc'})`, async () => {
    const host = open(['true'], edition);
    expect(host.containment).toBeNull();
    await run(host, '').ending;
    expect(host.containment).toBe(edition === 'perl' ? 'subreaper' : 'proc');
  });

  it('signals a process it has not reported started yet', async () => {
    const host = open(['sleep', '30'], edition);
    const { id, ending } = run(host, '');
    host.signal(id, 'SIGTERM');
    expect((await ending).exit).toMatchObject({ code: null, signal: 'SIGTERM' });
  });

  it('kills every group it started, grandchildren too, when the manager lets it go', async () => {
    const pids = join(dir, `${edition}-pids`);
    const host = open(['sh', '-c', `echo $$ >> ${pids}; sleep 1000 & echo $! >> ${pids}; wait`], edition);
    const first = run(host, '');
    const second = run(host, '');
    const noted = () => {
      try {
        return readFileSync(pids, 'utf8').split('\n').filter(Boolean).map(Number);
      } catch {
        return [];
      }
    };
    await until(() => noted().length === 4, 'both commands and their grandchildren to start');
    // A command can be running before the host's report of its start has reached the manager:
    // one let go before that is lost as a process that never started (no exit to report).
    await until(() => first.pid() !== null && second.pid() !== null, 'both starts to be reported');
    expect(alive(noted())).toHaveLength(4);
    // What a manager's death looks like to the host: its stdin closes.
    host.close();
    try {
      await until(() => alive(noted()).length === 0, 'every group to die', 3_000);
    } finally {
      for (const pid of alive(noted())) process.kill(pid, 'SIGKILL');
    }
    // The host left with them; what it still held is reported lost.
    for (const { ending } of [first, second]) {
      expect((await ending).exit).toMatchObject({ code: null, signal: null, stderr: 'the spawn host died (exit code 0)' });
    }
  });

  /**
   * `n` workers (`cat`, waiting on its open stdin) that have started, on a host that hands
   * over `frameSlice` frames per turn; `exitAtOnce` then ends them all while the manager's
   * loop stays blocked until the host has reported every exit, so that the exits reach the
   * manager in one read. `then` runs before the loop goes on.
   */
  async function burst(n: number, frameSlice: number) {
    const host = open(['cat'], edition, frameSlice);
    const workers = Array.from({ length: n }, () => run(host));
    await until(() => workers.every((w) => w.pid() !== null), 'every worker to start', 60_000);
    // This test's host: the one the workers descend from (an earlier test's may still be exiting).
    const hostPid = childrenOf(process.pid)
      .filter(isSpawnHost)
      .find((pid) => descendantsOf(pid).includes(workers[0].pid()!));
    if (hostPid === undefined) throw new Error('the host of these workers was not found in /proc');
    const exitAtOnce = (then = () => {}) => {
      for (const w of workers) host.stdin(w.id, '');
      const pause = new Int32Array(new SharedArrayBuffer(4));
      const deadline = Date.now() + 60_000;
      while (childrenOf(hostPid).length > 0 || statOf(hostPid)?.state !== 'S') {
        if (Date.now() > deadline) throw new Error('timed out waiting for the host to report every exit');
        Atomics.wait(pause, 0, 0, 5);
      }
      Atomics.wait(pause, 0, 0, 50);
      then();
    };
    return { workers, hostPid, exitAtOnce };
  }

  it('hands a burst of exits, read at once, to the manager in slices: a bounded number per turn', async () => {
    const { workers, exitAtOnce } = await burst(3 * FRAME_SLICE + 5, FRAME_SLICE);
    const turns: number[] = [];
    const turn = turnCounter();
    for (const w of workers) void w.ending.then(() => turns.push(turn.now));
    exitAtOnce();
    const endings = await Promise.all(workers.map((w) => w.ending));
    turn.stop();
    expect(endings.map((e) => e.exit?.code)).toEqual(workers.map(() => 0));
    // All at once, had they been handled in the read's own callback.
    expect(perTurn(turns)).toEqual([FRAME_SLICE, FRAME_SLICE, FRAME_SLICE, 5]);
  });

  it('hands over every exit it read before it died, none failed as lost', async () => {
    // One frame per turn: most of them are still to be handed over when the host's pipe closes.
    const { workers, hostPid, exitAtOnce } = await burst(40, 1);
    // The host dies once it has reported every exit.
    exitAtOnce(() => process.kill(hostPid, 'SIGKILL'));
    const endings = await Promise.all(workers.map((w) => w.ending));
    expect(endings.map((e) => e.exit)).toEqual(workers.map(() => expect.objectContaining({ code: 0, signal: null })));
  });

  it('reports a command that cannot start, with its errno code', async () => {
    const host = open(['/nonexistent/job'], edition);
    const { error, spawned } = await run(host, '').ending;
    expect(spawned).toBeNull();
    expect(error).toMatchObject({ code: 'ENOENT' });
    expect(error?.message).toMatch(/^\/nonexistent\/job: (exec|spawn) failed: .*\(ENOENT\)$/i);
  });
});

describe('choosing the host', () => {
  it('falls back to the Node host when the Perl one does not come up', async () => {
    const fakeBin = join(dir, 'fake-bin');
    mkdirSync(fakeBin, { recursive: true });
    const perl = join(fakeBin, 'perl');
    writeFileSync(perl, '#!/bin/sh\nexit 3\n');
    chmodSync(perl, 0o755);
    const saved = process.env.PATH;
    process.env.PATH = `${fakeBin}:${saved}`;
    try {
      const host = open(['cat'], 'auto');
      expect(host.edition).toBe('perl');
      const lost = await run(host, 'x').ending;
      expect(lost.error?.message).toMatch(/spawn host died \(exit code 3\)/);
      expect(host.edition).toBe('node');
      expect((await run(host, 'back').ending).exit).toMatchObject({ code: 0, stdout: 'back' });
    } finally {
      process.env.PATH = saved;
    }
  });
});
