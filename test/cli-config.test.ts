import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { fixture } from './helpers/procs.js';

/**
 * The three layers of `tidepool run`'s options (flags, TIDEPOOL_* variables, a config file, in
 * that order of precedence), the config file's errors, and what its logs never show. The real
 * bin, real processes; what a run used is read from what its workers did, or from its `options`
 * log line (debug level).
 */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const dir = realpathSync(mkdtempSync(join(tmpdir(), 'tidepool-config-')));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let seq = 0;
/** A fresh directory holding `files` (name → content). */
function folder(files: Record<string, string>): string {
  const path = join(dir, `case-${++seq}`);
  mkdirSync(path);
  for (const [name, content] of Object.entries(files)) writeFileSync(join(path, name), content);
  return path;
}

/** Run the CLI to its end in `cwd`, with only `env` of TIDEPOOL_* variables (but the CI's spawn host). */
function run(args: string[], options: { input?: string; env?: Record<string, string>; cwd?: string } = {}) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('TIDEPOOL_') && name !== 'TIDEPOOL_SPAWN_HOST') delete env[name];
  const result = spawnSync(process.execPath, [BIN, 'run', ...args], {
    input: options.input ?? '',
    cwd: options.cwd ?? dir,
    env: { ...env, ...options.env },
    encoding: 'utf8',
    timeout: 25_000,
  });
  const results = result.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { id: string; status: string; result?: unknown; error?: unknown });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr, results };
}

/** The `options` log line of a run at debug level: what createPool was given, and from where. */
function optionsLine(stderr: string): { options: Record<string, unknown>; origins: Record<string, string> } {
  const line = stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; options: Record<string, unknown>; origins: Record<string, string> })
    .find((l) => l.msg === 'options');
  if (!line) throw new Error(`no options line in:\n${stderr}`);
  return line;
}

/** A command that prints the value of $A as its JSON result. */
const PRINT_A = ['sh', '-c', 'cat >/dev/null; printf \'{"a":"%s"}\' "$A"'];
const printA = `sh -c 'cat >/dev/null; printf "{\\"a\\":\\"%s\\"}" "$A"'`;

describe('precedence: a flag over its variable over the file', () => {
  // Each pair of layers, for a number, for the worker's environment, and for the worker.
  const cases: [string, { flag?: string[]; env?: Record<string, string>; file?: Record<string, unknown> }, unknown, string][] = [
    ['flag over variable', { flag: ['--concurrency', '3'], env: { TIDEPOOL_CONCURRENCY: '4' } }, 3, '--concurrency'],
    ['variable over file', { env: { TIDEPOOL_CONCURRENCY: '4' }, file: { concurrency: 5 } }, 4, 'TIDEPOOL_CONCURRENCY'],
    ['flag over file', { flag: ['--concurrency', '3'], file: { concurrency: 5 } }, 3, '--concurrency'],
    ['file alone', { file: { concurrency: 5 } }, 5, 'tidepool.config.json:'],
  ];
  it.each(cases)('concurrency: %s', (_name, layers, value, origin) => {
    const cwd = folder({ 'tidepool.config.json': JSON.stringify({ worker: { command: ['cat'] }, ...layers.file }) });
    const r = run(['--config', 'tidepool.config.json', '--log-level', 'debug', ...(layers.flag ?? [])], { cwd, env: layers.env, input: '{}\n' });
    expect(r.code, r.stderr).toBe(0);
    const { options, origins } = optionsLine(r.stderr);
    expect(options.concurrency).toBe(value);
    expect(origins.concurrency).toBe(origin);
  });

  const envCases: [string, { flag?: string[]; env?: Record<string, string>; file?: string[] }, string][] = [
    ['flag over variable', { flag: ['--env', 'A=flag'], env: { TIDEPOOL_ENV: 'A=variable' } }, 'flag'],
    ['variable over file', { env: { TIDEPOOL_ENV: 'A=variable' }, file: ['A=file'] }, 'variable'],
    ['flag over file', { flag: ['--env', 'A=flag'], file: ['A=file'] }, 'flag'],
    ['file alone', { file: ['A=file'] }, 'file'],
  ];
  it.each(envCases)('the workers\' environment: %s (what the worker sees)', (_name, layers, winner) => {
    const cwd = folder({ 'tidepool.config.json': JSON.stringify({ worker: { command: PRINT_A }, ...(layers.file ? { env: layers.file } : {}) }) });
    const r = run(['--config', 'tidepool.config.json', ...(layers.flag ?? [])], { cwd, env: layers.env, input: '{}\n' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.results.map((x) => x.result)).toEqual([{ a: winner }]);
  });

  const workerCases: [string, { flag?: string[]; env?: Record<string, string> }, string][] = [
    ['a command flag over the file\'s module worker', { flag: ['--command', printA] }, 'command'],
    ['a command variable over the file\'s module worker', { env: { TIDEPOOL_COMMAND: printA } }, 'command'],
    ['the file\'s module worker when no flag or variable names one', {}, 'module'],
  ];
  it.each(workerCases)('the worker: %s', (_name, layers, kind) => {
    const cwd = folder({ 'tidepool.config.json': JSON.stringify({ worker: { module: 'handler.js' }, env: ['A=set'] }) });
    copyFileSync(fixture('echo.js'), join(cwd, 'handler.js'));
    const r = run(['--config', 'tidepool.config.json', ...(layers.flag ?? [])], { cwd, env: layers.env, input: '{"params":{"n":1}}\n' });
    expect(r.code, r.stderr).toBe(0);
    const result = r.results[0]?.result as Record<string, unknown>;
    if (kind === 'command') expect(result).toEqual({ a: 'set' });
    else expect(result).toMatchObject({ params: { n: 1 }, attempt: 1 });
  });

  it('a worker flag outranks a worker variable of the other kind (as before the file layer)', () => {
    const r = run(['--command', printA, '--env', 'A=x'], { env: { TIDEPOOL_WORKER: fixture('echo.js') }, input: '{}\n' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.results[0]?.result).toEqual({ a: 'x' });
  });

  it('TIDEPOOL_CONFIG names the file when --config does not; --config wins over it', () => {
    const cwd = folder({
      'a.json': JSON.stringify({ worker: { command: PRINT_A }, env: ['A=from-a'] }),
      'b.json': JSON.stringify({ worker: { command: PRINT_A }, env: ['A=from-b'] }),
    });
    const byVariable = run([], { cwd, env: { TIDEPOOL_CONFIG: 'a.json' }, input: '{}\n' });
    expect(byVariable.results[0]?.result).toEqual({ a: 'from-a' });
    const byFlag = run(['--config', 'b.json'], { cwd, env: { TIDEPOOL_CONFIG: 'a.json' }, input: '{}\n' });
    expect(byFlag.results[0]?.result).toEqual({ a: 'from-b' });
  });
});

describe('paths in a config file resolve against its directory', () => {
  it('the worker module, cwd and stateDir, run from another directory; .mjs and .js modules too', () => {
    for (const [name, text] of [
      ['tidepool.config.json', JSON.stringify({ worker: { module: './handler.js' }, cwd: '.', stateDir: 'state' })],
      ['tidepool.config.mjs', `export default ${JSON.stringify({ worker: { module: './handler.js' }, cwd: '.', stateDir: 'state' })};`],
      ['tidepool.config.cjs', `module.exports = ${JSON.stringify({ worker: { module: './handler.js' }, cwd: '.', stateDir: 'state' })};`],
    ]) {
      const home = folder({ [name]: text, 'handler.js': 'export default async () => ({ cwd: process.cwd() });\n' });
      mkdirSync(join(home, 'state'));
      const r = run(['--config', join(home, name), '--log-level', 'debug'], { cwd: dir, input: '{}\n' });
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      expect(r.results[0]?.result).toEqual({ cwd: home });
      expect(optionsLine(r.stderr).options).toMatchObject({ worker: { module: join(home, 'handler.js') }, cwd: home, stateDir: join(home, 'state') });
    }
  });
});

describe('a bad config file exits 2 naming the file, the key and what it accepts; nothing runs', () => {
  // A worker that leaves a file behind if it ever runs.
  const worker = { worker: { command: ['touch', 'ran'] } };
  const cases: [string, Record<string, string>, string, RegExp | string][] = [
    [
      'a wrong type',
      { 'tidepool.config.json': JSON.stringify({ ...worker, concurrency: 'four' }) },
      'tidepool.config.json',
      'tidepool: tidepool.config.json: concurrency must be a positive integer, got "four"\n',
    ],
    ['a number past a timer', { 'c.json': JSON.stringify({ ...worker, timeout: 3e9 }) }, 'c.json', 'tidepool: c.json: timeout must be at most 2147483647, got 3000000000\n'],
    [
      'an unknown key',
      { 'c.json': JSON.stringify({ ...worker, concurency: 4 }) },
      'c.json',
      /^tidepool: c\.json: concurency is not an option; the options are worker, concurrency, timeout, .*stateDir, inspect\n$/,
    ],
    ['the file itself as a key', { 'c.json': JSON.stringify({ ...worker, config: 'x.json' }) }, 'c.json', /^tidepool: c\.json: config is not an option/],
    ['a worker of the wrong shape', { 'c.json': JSON.stringify({ worker: 'cat' }) }, 'c.json', /^tidepool: c\.json: worker must be \{ module: .* \}, got "cat"\n$/],
    ['an empty command', { 'c.json': JSON.stringify({ worker: { command: [] } }) }, 'c.json', /^tidepool: c\.json: worker.command must name an executable, got \[\]\n$/],
    ['a missing file', {}, 'nowhere.json', /^tidepool: nowhere\.json: cannot be read: ENOENT/],
    ['a directory', {}, '.', /^tidepool: \.: must be a \.json file, or a \.js, \.mjs or \.cjs module/],
    ['text that is not JSON', { 'c.json': '{ "concurrency": 4, }' }, 'c.json', /^tidepool: c\.json: is not valid JSON: /],
    ['JSON that is not an object', { 'c.json': '[1, 2]' }, 'c.json', 'tidepool: c.json: must hold an object of options, got an array\n'],
    ['a module that throws', { 'c.mjs': "throw new Error('config boom');\n" }, 'c.mjs', /^tidepool: c\.mjs: could not be loaded: config boom \(at file:.*c\.mjs:1/],
    ['a module with a syntax error', { 'c.mjs': 'export default {\n' }, 'c.mjs', /^tidepool: c\.mjs: could not be loaded: .* \(at \/.*c\.mjs:\d+\)\n$/],
    ['a CommonJS module with a syntax error', { 'c.cjs': 'module.exports = {\n' }, 'c.cjs', /^tidepool: c\.cjs: could not be loaded: .* \(at \/.*c\.cjs:\d+\)\n$/],
    ['a module without a default export', { 'c.mjs': 'export const concurrency = 4;\n' }, 'c.mjs', /^tidepool: c\.mjs: must export an object of options/],
    ['a module exporting a function', { 'c.mjs': 'export default () => ({});\n' }, 'c.mjs', 'tidepool: c.mjs: must hold an object of options, got a function\n'],
    ['another kind of file', { 'c.yaml': 'concurrency: 4\n' }, 'c.yaml', /^tidepool: c\.yaml: must be a \.json file/],
  ];
  it.each(cases)('%s', (_name, files, config, message) => {
    const cwd = folder(files);
    const r = run(['--config', config], { cwd, input: '{"id":"x"}\n' });
    expect(r.code).toBe(2);
    if (typeof message === 'string') expect(r.stderr).toBe(message);
    else expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
    expect(existsSync(join(cwd, 'ran'))).toBe(false);
  });

  it('an env entry that is wrong is named by its place, its value never shown', () => {
    const cwd = folder({ 'c.json': JSON.stringify({ ...worker, env: ['OK=1', 'NOT A NAME=hunter2'] }) });
    const r = run(['--config', 'c.json'], { cwd, input: '{}\n' });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('tidepool: c.json: env.1 must hold NAME or NAME=VALUE\n');
  });

  it('a bad value from a variable names the variable, not the file that also sets it', () => {
    const cwd = folder({ 'c.json': JSON.stringify({ ...worker, concurrency: 2 }) });
    const r = run(['--config', 'c.json'], { cwd, env: { TIDEPOOL_CONCURRENCY: '0' }, input: '{}\n' });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('tidepool: TIDEPOOL_CONCURRENCY must be a positive integer, got 0\n');
  });
});

describe('logs never show secrets', () => {
  const secrets = ['s3cr3t-token-value', 'hunter2-amqp-password', 'file-only-s3cret'];
  /** Every line on stderr: log lines (JSON) and what the workers wrote to their stderr. */
  const logLines = (stderr: string) => stderr.split('\n').filter(Boolean);

  it('--env values and an AMQP password: not in any log line at trace level, while the workers get them', () => {
    const cwd = folder({});
    // Prints the secret as its result (stdout is results, not logs); fails for one task.
    const command = `sh -c 'read line; case "$line" in *fail*) echo failing >&2; exit 3;; esac; printf "{\\"t\\":\\"%s\\",\\"u\\":\\"%s\\"}" "$TOKEN" "$AMQP_URL"'`;
    const r = run(
      [
        '--command', command,
        '--env', `TOKEN=${secrets[0]}`,
        '--env', `AMQP_URL=amqp://user:${secrets[1]}@localhost:5672/vhost`,
        '--log-level', 'trace',
        '--attempts', '2',
        '--retry-delay', '1',
      ],
      { cwd, input: '{"id":"ok"}\n{"id":"fail"}\n' },
    );
    expect(r.code).toBe(1);
    // The workers had the values.
    expect(r.results.find((x) => x.id === 'ok')?.result).toEqual({ t: secrets[0], u: `amqp://user:${secrets[1]}@localhost:5672/vhost` });
    const lines = logLines(r.stderr);
    // The options were logged (names kept), and the failures: the search covers real lines.
    expect(lines.some((l) => l.includes('"TOKEN=[redacted]"') && l.includes('"AMQP_URL=[redacted]"'))).toBe(true);
    expect(lines.some((l) => l.includes('attempt failed'))).toBe(true);
    expect(lines.filter((l) => l.startsWith('{"level":')).length).toBeGreaterThan(5);
    for (const line of lines) for (const secret of secrets) expect(line).not.toContain(secret);
  });

  it('env values from a config file and from TIDEPOOL_ENV alike', () => {
    const cwd = folder({ 'c.json': JSON.stringify({ worker: { command: PRINT_A }, env: [`A=${secrets[2]}`], logLevel: 'trace' }) });
    const fromFile = run(['--config', 'c.json'], { cwd, input: '{}\n' });
    expect(fromFile.results[0]?.result).toEqual({ a: secrets[2] });
    const fromVariable = run(['--config', 'c.json'], { cwd, env: { TIDEPOOL_ENV: `A=${secrets[0]}` }, input: '{}\n' });
    expect(fromVariable.results[0]?.result).toEqual({ a: secrets[0] });
    for (const r of [fromFile, fromVariable]) {
      const lines = logLines(r.stderr);
      expect(lines.some((l) => l.includes('"A=[redacted]"'))).toBe(true);
      for (const line of lines) for (const secret of secrets) expect(line).not.toContain(secret);
    }
  });
});
