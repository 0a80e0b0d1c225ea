import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parse as parseShell } from 'shell-quote';
import { OptionError, TidepoolError, UsageError } from '../errors.js';
import { DEFAULTS, LOG_LEVELS } from '../options.js';
import type { PoolOptions } from '../options.js';
import { EXIT_CODES } from './input.js';

/** One CLI flag: the pool option it sets (its default comes from `DEFAULTS`), its argument, its help. */
interface FlagDoc {
  option?: keyof typeof DEFAULTS | 'concurrency' | 'memoryLimit' | 'env' | 'cwd';
  arg: string;
  help: string;
  /** Shown instead of a value from DEFAULTS. */
  fallback?: string;
}

/** Every flag of `tidepool run`, in the order the usage text lists them. */
const FLAGS = {
  worker: { arg: 'PATH', help: 'a module whose default export is async (task, ctx) => result' },
  command: { arg: '"CMD ARGS"', help: 'an executable: task JSON on stdin, result on stdout' },
  concurrency: { option: 'concurrency', arg: 'N', help: 'most live worker processes', fallback: 'CPU count' },
  timeout: { option: 'timeout', arg: 'MS', help: 'hard timeout of one attempt' },
  attempts: { option: 'attempts', arg: 'N', help: 'attempts per task, the first included' },
  'max-tasks-per-worker': { option: 'maxTasksPerWorker', arg: 'N', help: 'tasks a worker serves before it exits' },
  spares: { option: 'spares', arg: 'N', help: 'warm workers kept ready' },
  'retry-delay': { option: 'retryDelay', arg: 'MS', help: 'base of the exponential retry backoff' },
  'retry-max-delay': { option: 'retryMaxDelay', arg: 'MS', help: 'ceiling of the retry backoff' },
  'spawn-timeout': { option: 'spawnTimeout', arg: 'MS', help: 'time for a worker to become ready' },
  'kill-grace': { option: 'killGrace', arg: 'MS', help: 'between SIGTERM and SIGKILL' },
  'idle-timeout': { option: 'idleTimeout', arg: 'MS', help: 'a reused worker idle this long exits' },
  'max-spawning': { option: 'maxSpawning', arg: 'N', help: 'most workers starting at once' },
  'max-crashes': { option: 'maxCrashes', arg: 'N', help: 'crash breaker threshold' },
  'crash-window': { option: 'crashWindow', arg: 'MS', help: 'crash breaker window' },
  'breaker-cooldown': { option: 'breakerCooldown', arg: 'MS', help: 'intake pause once the breaker trips' },
  'memory-limit': { option: 'memoryLimit', arg: 'MIB', help: "memory cap on each worker's whole process tree", fallback: 'none' },
  env: { option: 'env', arg: 'NAME[=VALUE]', help: "pass (or set) a variable in the workers' environment; repeatable" },
  cwd: { option: 'cwd', arg: 'DIR', help: 'working directory of the workers' },
  'log-level': { option: 'logLevel', arg: 'LEVEL', help: LOG_LEVELS.join(', ') },
} as const satisfies Record<string, FlagDoc>;

function usage(): string {
  const rows: [string, string][] = Object.entries(FLAGS).map(([flag, doc]: [string, FlagDoc]) => {
    const known = doc.option !== undefined && doc.option in DEFAULTS ? DEFAULTS[doc.option as keyof typeof DEFAULTS] : undefined;
    const shown = known ?? doc.fallback;
    return [`--${flag} ${doc.arg}`, shown === undefined ? doc.help : `${doc.help} (default: ${shown})`];
  });
  rows.push(['--version', "tidepool's version"], ['-h, --help', 'this text']);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  return `Usage: tidepool run [FILE|-] (--worker PATH | --command "CMD ARGS") [options]

Runs tasks (JSON Lines, one object per line; FILE or stdin) through a pool of worker
processes and writes one JSON line per task to stdout, in completion order.

Options (each also read from TIDEPOOL_<NAME>, e.g. TIDEPOOL_CONCURRENCY):
${rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`).join('\n')}

Exit status: 0 every task resolved, 1 some failed, 2 bad usage.

Also: tidepool enqueue --amqp URL --queue NAME [FILE|-] [--wait]   (tidepool enqueue --help)`;
}

/** Flags that map one-to-one onto integer pool options. */
const INTEGER_FLAGS = {
  concurrency: 'concurrency',
  timeout: 'timeout',
  attempts: 'attempts',
  'max-tasks-per-worker': 'maxTasksPerWorker',
  spares: 'spares',
  'retry-delay': 'retryDelay',
  'retry-max-delay': 'retryMaxDelay',
  'spawn-timeout': 'spawnTimeout',
  'kill-grace': 'killGrace',
  'idle-timeout': 'idleTimeout',
  'max-spawning': 'maxSpawning',
  'max-crashes': 'maxCrashes',
  'crash-window': 'crashWindow',
  'breaker-cooldown': 'breakerCooldown',
  'memory-limit': 'memoryLimit',
} as const satisfies Record<string, keyof PoolOptions>;

type Flag = keyof typeof FLAGS | 'help' | 'version';

const flagConfig = {
  ...Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' }])),
  env: { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The flag behind a pool option's name (`worker.command` → `--command`). */
function flagFor(option: string): string {
  const [head, next] = option.split('.');
  if (head === 'worker') return next === 'command' ? '--command' : '--worker';
  return `--${kebab(head!)}`;
}

const envName = (flag: string) => `TIDEPOOL_${flag.toUpperCase().replace(/-/g, '_')}`;

/**
 * Split a command line as a POSIX shell would (quotes, backslash escapes), with the
 * `shell-quote` library; `$NAME` stays literal (the caller's shell has expanded what it
 * meant to). Operators (`&&`, `|`, `>`, `;`) throw a UsageError: one executable is run, not a
 * shell; `sh -c '...'` runs a shell line.
 */
export function splitCommand(line: string): string[] {
  const words: string[] = [];
  for (const entry of parseShell(escapeInnerHashes(line), (name) => `$${name}`)) {
    if (typeof entry === 'string') words.push(entry);
    else if ('comment' in entry) break;
    else if (entry.op === 'glob') words.push(entry.pattern);
    else throw new UsageError(`--command runs one executable, not a shell line (found ${JSON.stringify(entry.op)}); use --command "sh -c '...'"`);
  }
  return words;
}

/**
 * A POSIX shell starts a comment only at the start of a word; shell-quote starts one at any
 * `#` outside quotes (`--tag=v1#2` would lose `#2`). Escape those inside a word.
 */
function escapeInnerHashes(line: string): string {
  let out = '';
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === null && c === '\\') {
      out += c + (line[++i] ?? '');
      continue;
    }
    if (quote === null && (c === '"' || c === "'")) quote = c;
    else if (c === quote) quote = null;
    else if (quote === null && c === '#' && i > 0 && !/\s/.test(line[i - 1])) {
      out += '\\#';
      continue;
    }
    out += c;
  }
  return out;
}

/** Where an option's value came from, as the user would name it: a flag or a variable. */
export type Origins = Record<string, string>;

/** The largest value a whole-number flag may take (a time beyond it would overflow a timer). */
const MAX_WHOLE = 2 ** 31 - 1;

/**
 * Flags and TIDEPOOL_* variables to pool options; a flag wins over its variable (and either
 * worker flag over both worker variables). Returns the options and where each came from.
 * Throws UsageError naming the flag or variable at fault.
 */
export function optionsFromArgs(
  values: Partial<Record<Flag, string | string[] | boolean>>,
  env: NodeJS.ProcessEnv,
): { options: PoolOptions; origins: Origins } {
  const origins: Origins = {};
  const get = (flag: string, useEnv = true): { value: string; origin: string } | undefined => {
    const v = values[flag as Flag];
    if (typeof v === 'string') return { value: v, origin: `--${flag}` };
    const name = envName(flag);
    return useEnv && env[name] !== undefined ? { value: env[name]!, origin: name } : undefined;
  };
  // A worker given by flag wins over both worker variables.
  const flagged = typeof values.worker === 'string' || typeof values.command === 'string';
  const worker = get('worker', !flagged);
  const command = get('command', !flagged);
  if (worker !== undefined && command !== undefined) {
    throw new UsageError(`give a worker module or a command, not both (${worker.origin} and ${command.origin})`);
  }
  if (worker === undefined && command === undefined) throw new UsageError('--worker PATH or --command "CMD ARGS" is required');
  const options: Record<string, unknown> = {};
  if (worker !== undefined) {
    options.worker = { module: worker.value };
    origins['worker.module'] = worker.origin;
  } else {
    const argv = splitCommand(command!.value);
    if (argv.length === 0) throw new UsageError(`${command!.origin} must name an executable`);
    options.worker = { command: argv };
    origins['worker.command'] = command!.origin;
  }
  for (const [flag, option] of Object.entries(INTEGER_FLAGS)) {
    const given = get(flag);
    if (given === undefined) continue;
    const raw = given.value.trim();
    if (!/^\d+$/.test(raw)) throw new UsageError(`${given.origin} must be a whole number, got ${JSON.stringify(given.value)}`);
    if (Number(raw) > MAX_WHOLE) throw new UsageError(`${given.origin} must be at most ${MAX_WHOLE}, got ${raw}`);
    options[option] = Number(raw);
    origins[option] = given.origin;
  }
  for (const [flag, option] of [['cwd', 'cwd'], ['log-level', 'logLevel']] as const) {
    const given = get(flag);
    if (given === undefined) continue;
    options[option] = given.value;
    origins[option] = given.origin;
  }
  if (Array.isArray(values.env)) {
    options.env = values.env;
    origins.env = '--env';
  } else if (env.TIDEPOOL_ENV !== undefined) {
    // Several entries, split as a shell would: TIDEPOOL_ENV="FOO=bar BAZ='two words'".
    options.env = splitCommand(env.TIDEPOOL_ENV);
    origins.env = 'TIDEPOOL_ENV';
  }
  return { options: options as unknown as PoolOptions, origins };
}

/** The version in tidepool's package.json (found upward from this file: it runs from src and dist). */
function version(): string {
  for (let dir = new URL('.', import.meta.url); ; dir = new URL('..', dir)) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { name?: string; version?: string };
      if (pkg.version && pkg.name?.startsWith('tidepool')) return pkg.version;
    } catch {
      // not here
    }
    if (dir.pathname === '/') return 'unknown';
  }
}

/** Run the CLI; resolves with the exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    // Bad usage: the text goes where errors go.
    process.stderr.write(`${usage()}\n`);
    return EXIT_CODES.USAGE;
  }
  if (command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(`${usage()}\n`);
    return EXIT_CODES.OK;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    process.stdout.write(`tidepool ${version()}\n`);
    return EXIT_CODES.OK;
  }
  let origins: Origins = {};
  try {
    // Loaded only for this command: `run` does not pay for amqplib's import.
    if (command === 'enqueue') return await (await import('./enqueue.js')).enqueueMain(rest, env);
    if (command !== 'run') throw new UsageError(`unknown command ${JSON.stringify(command)}; try "tidepool run --help"`);
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: flagConfig, allowPositionals: true, strict: true });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    if (parsed.values.help) {
      process.stdout.write(`${usage()}\n`);
      return EXIT_CODES.OK;
    }
    if (parsed.values.version) {
      process.stdout.write(`tidepool ${version()}\n`);
      return EXIT_CODES.OK;
    }
    if (parsed.positionals.length > 1) throw new UsageError(`run takes one input (FILE or -), got ${parsed.positionals.length}`);
    const given = optionsFromArgs(parsed.values as Partial<Record<Flag, string | string[] | boolean>>, env);
    origins = given.origins;
    // Loaded here: `enqueue` does not pay for the pool's import.
    return await (await import('./run.js')).runCommand(parsed.positionals[0] ?? '-', given.options);
  } catch (err) {
    if (err instanceof OptionError) {
      // Name the option the way it was given: a flag, or a variable.
      process.stderr.write(`tidepool: ${origins[err.option] ?? flagFor(err.option)} ${err.detail}\n`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof UsageError) {
      const help = command === 'run' || command === 'enqueue' ? `Try "tidepool ${command} --help".\n` : '';
      process.stderr.write(`tidepool: ${err.message}\n${help}`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof TidepoolError && (err.code === 'TIDEPOOL_ERR_INPUT' || err.code === 'TIDEPOOL_ERR_WORKER_LOAD')) {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.USAGE;
    }
    throw err;
  }
}
