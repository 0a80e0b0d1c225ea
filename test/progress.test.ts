import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AttemptStart, ProgressEvent } from '../src/index.js';
import { ProgressLines } from '../src/child/host-protocol.js';
import { MAX_PROGRESS, PROGRESS_PREFIX } from '../src/child/protocol.js';
import { trackPools } from './helpers/pools.js';
import { fixture, statOf, until } from './helpers/procs.js';

/**
 * Progress from running attempts (a module's `ctx.progress`, a command's progress lines on
 * stderr) and `attempt:start` with the worker's real pid, with real processes and both
 * editions of the spawn host.
 */

const dir = mkdtempSync(join(tmpdir(), 'tidepool-progress-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const file = (name: string) => join(dir, `${++files}-${name}`);

const { startPool } = trackPools({ concurrency: 2, attempts: 1, killGrace: 2_000, logLevel: 'silent' });

/** The stderr the workers wrote, as the pool forwarded it. */
const collect = () => {
  const chunks: Buffer[] = [];
  return { stream: { write: (chunk: Buffer) => chunks.push(chunk) }, text: () => Buffer.concat(chunks).toString('utf8') };
};

for (const edition of ['perl', 'node'] as const) {
  describe(`progress (${edition} spawn host)`, () => {
    it.each([1, 3])('a module handler reports progress: the event and progressOf carry it (maxTasksPerWorker %i)', async (maxTasksPerWorker) => {
      const stderr = collect();
      const pool = await startPool(
        { worker: { module: fixture('progress.js') }, maxTasksPerWorker, stderr: stderr.stream },
        { spawnHost: edition },
      );
      const events: ProgressEvent[] = [];
      pool.on('progress', (event) => events.push(event));
      const release = file('release');
      const noted = file('noted');
      const result = pool.run({ id: 'p1', params: { release, noted } });
      await until(() => events.length === 2, 'two progress events');
      expect(events.map(({ taskId, attempt, value }) => ({ taskId, attempt, value }))).toEqual([
        { taskId: 'p1', attempt: 1, value: { step: 1 } },
        { taskId: 'p1', attempt: 1, value: { step: 2, of: 2 } },
      ]);
      expect(events[0].workerId).toMatch(/^worker\./);
      expect(pool.progressOf('p1')).toEqual({ step: 2, of: 2 });
      expect(pool.progressOf('nothing-of-that-id')).toBeUndefined();
      // What ctx.progress refused, with the reason, and that nothing was sent for it.
      await until(() => existsSync(noted), 'the handler to note what it was refused');
      expect(JSON.parse(readFileSync(noted, 'utf8'))).toEqual([
        expect.stringMatching(/^TypeError: ctx.progress: the value cannot be sent as JSON/),
        expect.stringMatching(new RegExp(`^RangeError: ctx.progress: the value is 5002 bytes of JSON, more than the ${MAX_PROGRESS}`)),
        expect.stringMatching(/^TypeError: ctx.progress: the value cannot be sent as JSON/),
      ]);
      writeFileSync(release, '');
      expect(await result).toMatchObject({ status: 'resolved', result: 'done' });
      expect(events).toHaveLength(2);
      // Kept per running attempt only.
      expect(pool.progressOf('p1')).toBeUndefined();
      expect(stderr.text()).not.toContain(PROGRESS_PREFIX);
    });

    it('progress a reused worker reports after its handler returned is dropped, never told as its next task\'s', async () => {
      const pool = await startPool({ worker: { module: fixture('progress-late.js') }, concurrency: 1, maxTasksPerWorker: 5 }, { spawnHost: edition });
      const events: ProgressEvent[] = [];
      pool.on('progress', (event) => events.push(event));
      const fired = file('fired');
      const release = file('release');
      expect(await pool.run({ id: 'a', params: { kind: 'late', delay: 100, fired } })).toMatchObject({ status: 'resolved', result: 'returned' });
      // The same worker (concurrency 1) runs b while a's timer fires.
      const b = pool.run({ id: 'b', params: { kind: 'wait', release } });
      await until(() => existsSync(fired), "a's late progress call");
      // The call was made before `fired` was written: had it been sent, it would be here by now
      // (the worker answers b only after it, on the same channel).
      writeFileSync(release, '');
      expect(await b).toMatchObject({ status: 'resolved', result: 'done' });
      expect(events).toEqual([]);
      expect(pool.progressOf('b')).toBeUndefined();
    });

    it('a command reports progress on stderr: its lines reach the event and are not forwarded; other lines are', async () => {
      const release = file('release');
      const stderr = collect();
      const pool = await startPool({ worker: { command: ['sh', fixture('progress.sh'), release] }, stderr: stderr.stream }, { spawnHost: edition });
      const events: ProgressEvent[] = [];
      pool.on('progress', (event) => events.push(event));
      const result = pool.run({ id: 'c1' });
      await until(() => events.length === 2, 'two progress events');
      expect(events.map((e) => e.value)).toEqual([{ done: 1, of: 3 }, { done: 2, of: 3 }]);
      expect(pool.progressOf('c1')).toEqual({ done: 2, of: 3 });
      writeFileSync(release, '');
      expect(await result).toMatchObject({ status: 'resolved', result: { ok: true } });
      const forwarded = stderr.text();
      expect(forwarded).toContain('an ordinary line\n');
      // The line too long to be progress is ordinary stderr, whole.
      expect(forwarded).toContain(`${PROGRESS_PREFIX}"${'0'.repeat(5000)}"\n`);
      expect(forwarded).not.toContain('"done"');
    });

    it('attempt:start carries the pid of the process running the attempt (checked in /proc while it runs)', async () => {
      const pool = await startPool({ worker: { module: fixture('hang.js') } }, { spawnHost: edition });
      const starts: AttemptStart[] = [];
      const spawned = new Map<string, number>();
      pool.on('attempt:start', (start) => starts.push(start));
      pool.on('worker:spawned', ({ workerId, pid }) => spawned.set(workerId, pid));
      const pidFile = file('grandchild');
      const result = pool.run({ id: 's1', params: { pidFile } });
      await until(() => starts.length === 1 && existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the attempt to start');
      const [start] = starts;
      expect(start).toMatchObject({ taskId: 's1', attempt: 1, workerId: expect.stringMatching(/^worker\./) });
      const grandchild = Number(readFileSync(pidFile, 'utf8'));
      // The grandchild the handler started is a child of that very process.
      expect(statOf(grandchild)?.ppid).toBe(start.pid);
      expect(statOf(start.pid!)?.state).not.toBe('Z');
      expect(spawned.get(start.workerId)).toBe(start.pid);
      expect(pool.cancel('s1')).toBe('running');
      await result;
    });
  });
}

describe('progress lines (the splitter the Node spawn host uses)', () => {
  const split = (...chunks: string[]) => {
    const lines = new ProgressLines();
    const text: string[] = [];
    const values: string[] = [];
    for (const chunk of chunks) {
      const out = lines.push(Buffer.from(chunk));
      text.push(...out.text.map(String));
      values.push(...out.values.map(String));
    }
    text.push(String(lines.end()));
    return { text: text.join(''), values };
  };

  it('takes progress lines out wherever chunks are cut, and passes everything else on', () => {
    const input = `a\n${PROGRESS_PREFIX}{"n":1}\nTIDE not progress\n${PROGRESS_PREFIX}2\n tail`;
    const whole = split(input);
    expect(whole).toEqual({ text: 'a\nTIDE not progress\n tail', values: ['{"n":1}', '2'] });
    for (let cut = 1; cut < input.length; cut++) expect(split(input.slice(0, cut), input.slice(cut))).toEqual(whole);
  });

  it('a prefixed line past the cap, or cut off by the end, is ordinary text', () => {
    const long = `${PROGRESS_PREFIX}${'x'.repeat(MAX_PROGRESS + 1)}\n`;
    expect(split(long)).toEqual({ text: long, values: [] });
    expect(split(`${PROGRESS_PREFIX}{"n":`)).toEqual({ text: `${PROGRESS_PREFIX}{"n":`, values: [] });
    const atCap = `${PROGRESS_PREFIX}${'y'.repeat(MAX_PROGRESS)}\n`;
    expect(split(atCap).values).toEqual(['y'.repeat(MAX_PROGRESS)]);
  });
});
