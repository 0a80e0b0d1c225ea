import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { splitCommand } from '../src/cli/main.js';
import { fixture, until } from './helpers/procs.js';

/**
 * `tidepool run` as a newcomer meets it: a pipe closed early, a terminal, variables and flags,
 * odd inputs, a handler that cannot load. The real bin, real processes.
 */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const EXAMPLES = fileURLToPath(new URL('../examples/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tidepool-newcomer-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Run the CLI to its end with `env` added and `input` on stdin. */
function run(args: string[], options: { input?: string; env?: Record<string, string> } = {}) {
  const env = { ...process.env };
  // The caller's TIDEPOOL_* settings stay out, but for the spawn host edition CI chooses.
  for (const name of Object.keys(env)) if (name.startsWith('TIDEPOOL_') && name !== 'TIDEPOOL_SPAWN_HOST') delete env[name];
  const result = spawnSync(process.execPath, [BIN, ...args], {
    input: options.input ?? '',
    env: { ...env, ...options.env },
    encoding: 'utf8',
    timeout: 25_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A shell pipeline, for what only a shell shows (a reader that leaves early). */
function sh(line: string) {
  const result = spawnSync('sh', ['-c', line], { encoding: 'utf8', timeout: 25_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('a reader that leaves early (| head)', () => {
  it('three tasks into head -1, ten times: never a stack trace; exit 141 once a write fails, else 0', { timeout: 90_000 }, async () => {
    for (let i = 0; i < 10; i++) {
      const err = join(dir, `epipe-${i}.err`);
      const code = await new Promise<number | null>((resolve) => {
        const c = spawn('bash', ['-c', `printf '{}\\n{}\\n{}\\n' | node ${BIN} run - --command cat --log-level silent 2>${err} | head -1 >/dev/null; exit \${PIPESTATUS[1]}`]);
        c.on('close', resolve);
      });
      // 0 is right when every line was written before head left (as for any Unix tool).
      expect([0, 141]).toContain(code);
      expect(readFileSync(err, 'utf8')).toBe('');
    }
  });

  it('exits 141, quietly, when results are still to come once the reader has left', async () => {
    const tasks = join(dir, 'more.jsonl');
    writeFileSync(tasks, '{}\n'.repeat(200));
    const err = join(dir, 'more.err');
    const code = await new Promise<number | null>((resolve) => {
      const c = spawn('bash', ['-c', `node ${BIN} run ${tasks} --command cat --concurrency 2 --log-level silent 2>${err} | head -1 >/dev/null; exit \${PIPESTATUS[0]}`]);
      c.on('close', resolve);
    });
    expect(code).toBe(141);
    expect(readFileSync(err, 'utf8')).toBe('');
  });
});

describe('on a terminal', () => {
  it('never writes output or logs on the progress line, and the line counts done/failed/running with a rate', () => {
    const r = sh(`script -qc "node ${BIN} run --worker ${EXAMPLES}handler.js ${EXAMPLES}tasks.jsonl --retry-delay 10" /dev/null`);
    // What stays on each line of the screen: the text after the last erase of the line.
    const screen = r.stdout.split(/\r?\n/).map((line) => line.split('\r\x1b[K').pop()!);
    const progress = /^tidepool: \d+(\/\d+)? done, \d+ failed, \d+ running, [\d.]+\/s$/;
    for (const line of screen) {
      // A progress line is alone on its line; a result or log line never follows one.
      if (line.startsWith('tidepool:')) expect(line).toMatch(progress);
      else expect(line).not.toMatch(/running, [\d.]+\/s/);
    }
    const results = screen.filter((l) => l.startsWith('{"id":'));
    expect(results).toHaveLength(6);
    expect(screen).toContainEqual(expect.stringMatching(/^tidepool: 6\/6 done, 2 failed, 0 running, [\d.]+\/s$/));
    // Logs are for a person here (pino-pretty, one line each), not JSON.
    expect(screen).toContainEqual(expect.stringMatching(/^\[\d\d:\d\d:\d\d\.\d{3}\] .*WARN/));
  });

  it('says it reads stdin when stdin is a terminal', async () => {
    // A terminal (script's pty); once the run says it reads, Ctrl-D ends its input.
    const c = spawn('script', ['-qc', `node ${BIN} run --command cat`, '/dev/null'], { stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    const closed = new Promise<number | null>((resolve) => c.on('close', resolve));
    await until(() => out.includes('reading tasks from stdin'), 'the message on the terminal', 20_000);
    c.stdin.write('\x04');
    expect(await closed).toBe(0);
  });
});

describe('flags and variables', () => {
  it('a worker flag wins over a worker variable', () => {
    const r = run(['run', '--worker', `${EXAMPLES}handler.js`, '--log-level', 'silent'], {
      input: '{"id":"a","params":{"numbers":[1,2]}}\n',
      env: { TIDEPOOL_COMMAND: 'cat' },
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ id: 'a', status: 'resolved', result: { sum: 3 } });
  });

  it('TIDEPOOL_ENV sets variables in the workers, split as a shell would', () => {
    const r = run(['run', '--worker', fixture('env.js'), '--log-level', 'silent'], {
      input: '{"id":"e"}\n',
      env: { TIDEPOOL_ENV: "FOO=bar BAZ='two words'" },
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).result).toMatchObject({ FOO: 'bar', BAZ: 'two words' });
  });

  it('a bad value in a variable names the variable', () => {
    const r = run(['run', '--command', 'cat'], { env: { TIDEPOOL_CONCURRENCY: 'abc' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/TIDEPOOL_CONCURRENCY must be a whole number, got "abc"/);
  });

  it.each([
    ['a number past any limit', ['--concurrency', '99999999999999999999'], /--concurrency must be at most 2147483647/],
    ['a timeout a timer cannot hold', ['--timeout', '3000000000'], /--timeout must be at most 2147483647/],
  ])('%s is refused', (_, flags, message) => {
    const r = run(['run', '--command', 'cat', ...flags]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it('--version prints the version', () => {
    const r = run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^tidepool \d+\.\d+\.\d+\n$/);
    expect(run(['run', '--version']).stdout).toBe(r.stdout);
  });
});

describe('inputs', () => {
  it('a directory as input exits 2 with TIDEPOOL_ERR_INPUT wording, not a raw EISDIR', () => {
    const r = run(['run', '--command', 'cat', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`tidepool: cannot read ${dir}: it is a directory\n`);
  });

  it('a first line starting with a UTF-8 byte order mark is a task', () => {
    const r = run(['run', '--command', 'cat', '--log-level', 'silent'], { input: '\uFEFF{"id":"bom"}\n{"id":"next"}\n' });
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n').map((l) => JSON.parse(l).id).sort()).toEqual(['bom', 'next']);
  });

  it('a command gets the task bytes as they arrived (numbers past 2^53 intact)', () => {
    const out = join(dir, 'bytes.out');
    const line = '{"id":"big","row":1970670598291982290}';
    const r = run(['run', '--command', `sh -c 'cat > ${out}'`, '--log-level', 'silent'], { input: `${line}\n` });
    expect(r.code).toBe(0);
    expect(spawnSync('cat', [out], { encoding: 'utf8' }).stdout).toBe(`${line}\n`);
  });
});

describe('a handler that cannot load', () => {
  it('exits 2 at once with the error, its file and line, before taking any task', () => {
    const bad = join(dir, 'bad-handler.js');
    writeFileSync(bad, 'export default async function (task) {\n  return task +;\n}\n');
    const tasks = '{}\n'.repeat(20);
    const started = Date.now();
    const r = run(['run', '--worker', bad], { input: tasks });
    expect(r.code).toBe(2);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(r.stderr).toContain(`${bad}:2`);
    expect(r.stderr).toContain('SyntaxError');
    expect(r.stdout).toBe('');
  });
});

describe('--command is split as a shell would (shell-quote)', () => {
  it('keeps a backslash-escaped space in one word, and runs it', () => {
    expect(splitCommand('/opt/my\\ app/run --flag')).toEqual(['/opt/my app/run', '--flag']);
    const appDir = join(dir, 'my app');
    mkdirSync(appDir, { recursive: true });
    const script = join(appDir, 'run');
    writeFileSync(script, '#!/bin/sh\necho \'{"ran":true}\'\n');
    chmodSync(script, 0o755);
    const r = run(['run', '--command', script.replace(/ /g, '\\ '), '--log-level', 'silent'], { input: '{"id":"s"}\n' });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 'resolved', result: { ran: true } });
  });

  it('keeps a # inside a word (a shell starts a comment only at a word)', () => {
    expect(splitCommand("python3 -c 'print(1)' --tag=v1#2 --dry-run # a comment")).toEqual(['python3', '-c', 'print(1)', '--tag=v1#2', '--dry-run']);
    expect(splitCommand("'a#b' \"c#d\" e\\#f")).toEqual(['a#b', 'c#d', 'e#f']);
  });

  it('refuses shell operators, saying how to run a shell line', () => {
    const r = run(['run', '--command', 'sleep 1 && echo hi']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/one executable, not a shell line \(found "&&"\); use --command "sh -c/);
  });
});

describe('where output cannot go', () => {
  it('SIGINT while waiting on input, nothing running, exits 130', async () => {
    const c = spawn(process.execPath, [BIN, 'run', '-', '--command', 'cat', '--log-level', 'debug'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d) => (stderr += d));
    const closed = new Promise<number | null>((resolve) => c.on('close', (exitCode) => resolve(exitCode)));
    // Once the run reads its input (its signal handlers are in place), not after a guess.
    await until(() => stderr.includes('"msg":"reading tasks"'), 'the run to read its input', 20_000);
    c.kill('SIGINT');
    expect(await closed).toBe(130);
  });

  it('stdout on a full disk: says so and exits 1, no stack trace', () => {
    const r = sh(`node ${BIN} run --command cat --log-level silent > /dev/full <<'EOF'\n{"id":"a"}\n{"id":"b"}\nEOF`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^tidepool: cannot write results to stdout: .*ENOSPC/);
  });

  it('stderr on a full disk does not hold the run: results still come, exit as usual', () => {
    const r = sh(`node ${BIN} run --command cat --log-level debug 2>/dev/full <<'EOF'\n{"id":"a"}\n{"id":"b"}\nEOF`);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(2);
  });

  it("a module worker's last log lines are not lost when it exits", () => {
    const r = run(['run', '--worker', fixture('log-flood.js'), '--log-level', 'info'], { input: '{"id":"f","params":{"lines":20000}}\n' });
    expect(r.code).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.includes('LOGLINE'))).toHaveLength(20000);
  });
});

describe('start-up checks', () => {
  it('a module that exits while loading fails the check at start (exit 2), not every task', () => {
    const r = run(['run', '--worker', fixture('exit-at-load.js')], { input: '{}\n' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exited while it was being loaded/);
  });

  it('--cwd that is not a directory is named, exit 2', () => {
    const r = run(['run', '--command', 'cat', '--cwd', fixture('echo.js')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--cwd is not a directory/);
  });
});
