import { parseArgs } from 'node:util';
import { OptionError, TidepoolError, UsageError } from '../errors.js';
import type { PoolOptions } from '../options.js';
import { EXIT_CODES, runCommand } from './run.js';

const USAGE = `Usage: tidepool run [FILE|-] (--worker PATH | --command "CMD ARGS") [options]

Runs tasks (JSON Lines, one object per line; FILE or stdin) through a pool of worker
processes and writes one JSON line per task to stdout, in completion order.

Options (each also read from TIDEPOOL_<NAME>, e.g. TIDEPOOL_CONCURRENCY):
  --worker PATH               a module whose default export is async (task, ctx) => result
  --command "CMD ARGS"        an executable: task JSON on stdin, result on stdout
  --concurrency N             most live worker processes (default: CPU count)
  --timeout MS                hard timeout of one attempt (default 900000)
  --attempts N                attempts per task, the first included (default 3)
  --max-tasks-per-worker N    tasks a worker serves before it exits (default 1)
  --spares N                  warm workers kept ready (default 0)
  --retry-delay MS            base of the exponential retry backoff (default 1000)
  --retry-max-delay MS        ceiling of the retry backoff (default 60000)
  --spawn-timeout MS          time for a worker to become ready (default 10000)
  --kill-grace MS             between SIGTERM and SIGKILL (default 5000)
  --idle-timeout MS           a reused worker idle this long exits (default 60000)
  --max-crashes N             crash breaker threshold (default 10)
  --crash-window MS           crash breaker window (default 60000)
  --breaker-cooldown MS       intake pause once the breaker trips (default 5000)
  --memory-limit MIB          memory cap per worker process
  --env NAME[=VALUE]          pass (or set) a variable in the workers' environment; repeatable
  --cwd DIR                   working directory of the workers
  --log-level LEVEL           fatal, error, warn, info (default), debug, trace, silent
  -h, --help                  this text

Exit status: 0 every task resolved, 1 some failed, 2 bad usage.`;

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

const STRING_FLAGS = ['worker', 'command', 'cwd', 'log-level'] as const;

type Flag = keyof typeof INTEGER_FLAGS | (typeof STRING_FLAGS)[number] | 'env' | 'help';

const flagConfig = {
  ...Object.fromEntries(Object.keys(INTEGER_FLAGS).map((f) => [f, { type: 'string' }])),
  ...Object.fromEntries(STRING_FLAGS.map((f) => [f, { type: 'string' }])),
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
    process.stdout.write(`${USAGE}\n`);
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
      process.stdout.write(`${USAGE}\n`);
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
