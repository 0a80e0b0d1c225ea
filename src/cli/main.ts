import { parseArgs } from 'node:util';
import { OptionError, TidepoolError, UsageError } from '../errors.js';
import { DEFAULTS, LOG_LEVELS } from '../options.js';
import type { PoolOptions } from '../options.js';
import { EXIT_CODES, runCommand } from './run.js';

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
  'max-crashes': { option: 'maxCrashes', arg: 'N', help: 'crash breaker threshold' },
  'crash-window': { option: 'crashWindow', arg: 'MS', help: 'crash breaker window' },
  'breaker-cooldown': { option: 'breakerCooldown', arg: 'MS', help: 'intake pause once the breaker trips' },
  'memory-limit': { option: 'memoryLimit', arg: 'MIB', help: 'memory cap per worker process', fallback: 'none' },
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
  rows.push(['-h, --help', 'this text']);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  return `Usage: tidepool run [FILE|-] (--worker PATH | --command "CMD ARGS") [options]

Runs tasks (JSON Lines, one object per line; FILE or stdin) through a pool of worker
processes and writes one JSON line per task to stdout, in completion order.

Options (each also read from TIDEPOOL_<NAME>, e.g. TIDEPOOL_CONCURRENCY):
${rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`).join('\n')}

Exit status: 0 every task resolved, 1 some failed, 2 bad usage.`;
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
  'max-crashes': 'maxCrashes',
  'crash-window': 'crashWindow',
  'breaker-cooldown': 'breakerCooldown',
  'memory-limit': 'memoryLimit',
} as const satisfies Record<string, keyof PoolOptions>;

type Flag = keyof typeof FLAGS | 'help';

const flagConfig = {
  ...Object.fromEntries(Object.keys(FLAGS).map((f) => [f, { type: 'string' }])),
  env: { type: 'string', multiple: true },
  help: { type: 'boolean', short: 'h' },
} as const;

const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The flag behind a pool option's name (`worker.command` → `--command`). */
function flagFor(option: string): string {
  const [head, next] = option.split('.');
  if (head === 'worker') return next === 'command' ? '--command' : '--worker';
  return `--${kebab(head!)}`;
}

const envName = (flag: string) => `TIDEPOOL_${flag.toUpperCase().replace(/-/g, '_')}`;

/** Split a command line on white space, honouring single and double quotes. */
export function splitCommand(line: string): string[] {
  const words: string[] = [];
  const re = /"((?:\\.|[^"\\])*)"|'([^']*)'|(\S+)/g;
  let current = '';
  let last = -1;
  for (let m = re.exec(line); m; m = re.exec(line)) {
    const part = m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : (m[2] ?? m[3]);
    // Adjacent pieces without white space between them are one word (a"b"c).
    if (last === m.index && words.length > 0) current = words.pop()! + part;
    else current = part;
    words.push(current);
    last = re.lastIndex;
  }
  return words;
}

/** Flags and TIDEPOOL_* variables to pool options. Throws UsageError or OptionError. */
export function optionsFromArgs(
  values: Partial<Record<Flag, string | string[] | boolean>>,
  env: NodeJS.ProcessEnv,
): PoolOptions {
  const get = (flag: string): string | undefined => {
    const v = values[flag as Flag];
    if (typeof v === 'string') return v;
    return env[envName(flag)];
  };
  const worker = get('worker');
  const command = get('command');
  if (worker !== undefined && command !== undefined) throw new UsageError('give --worker or --command, not both');
  if (worker === undefined && command === undefined) throw new UsageError('--worker PATH or --command "CMD ARGS" is required');
  const options: Record<string, unknown> = {};
  if (worker !== undefined) options.worker = { module: worker };
  else {
    const argv = splitCommand(command!);
    if (argv.length === 0) throw new UsageError('--command must name an executable');
    options.worker = { command: argv };
  }
  for (const [flag, option] of Object.entries(INTEGER_FLAGS)) {
    const raw = get(flag);
    if (raw === undefined) continue;
    if (!/^\d+$/.test(raw.trim())) throw new UsageError(`--${flag} must be a whole number, got ${JSON.stringify(raw)}`);
    options[option] = Number(raw);
  }
  const cwd = get('cwd');
  if (cwd !== undefined) options.cwd = cwd;
  const logLevel = get('log-level');
  if (logLevel !== undefined) options.logLevel = logLevel;
  const envEntries = values.env;
  if (Array.isArray(envEntries)) options.env = envEntries;
  return options as unknown as PoolOptions;
}

/** Run the CLI; resolves with the exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(`${usage()}\n`);
    return command === undefined ? EXIT_CODES.USAGE : EXIT_CODES.OK;
  }
  try {
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
    if (parsed.positionals.length > 1) throw new UsageError(`run takes one input (FILE or -), got ${parsed.positionals.length}`);
    const options = optionsFromArgs(parsed.values as Partial<Record<Flag, string | string[] | boolean>>, env);
    return await runCommand(parsed.positionals[0] ?? '-', options);
  } catch (err) {
    if (err instanceof OptionError) {
      // Name the option the way it was given: as a flag.
      process.stderr.write(`tidepool: ${flagFor(err.option)} ${err.detail}\n`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`tidepool: ${err.message}\n${command === 'run' ? 'Try "tidepool run --help".\n' : ''}`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof TidepoolError && err.code === 'TIDEPOOL_ERR_INPUT') {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.USAGE;
    }
    throw err;
  }
}
