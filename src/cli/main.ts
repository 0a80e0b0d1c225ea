import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parse as parseShell } from 'shell-quote';
import { ConfigError, OptionError, TidepoolError, UsageError } from '../errors.js';
import { DEFAULTS, LOG_LEVELS } from '../options.js';
import type { PoolOptions } from '../options.js';
import { SERVE_DEFAULTS } from '../serve/options.js';
import type { ServeOptions } from '../serve/options.js';
import { defaultStateDir, loadConfig, optionsOf, pick } from './config.js';
import type { ConfigFile, FlagSpec } from './config.js';
import { EXIT_CODES } from './input.js';
import { DEFAULT_CONSUMER_TIMEOUT, DEFAULT_DELIVERY_LIMIT, DEFAULT_QUEUE_TYPE } from '../sources/amqp/topology.js';
import type { ServeAmqpOptions } from './serve.js';

/** One CLI flag: the pool option it sets (its default comes from `DEFAULTS`), its argument, its help. */
interface FlagDoc {
  option?: keyof typeof DEFAULTS | 'concurrency' | 'memoryLimit' | 'env' | 'cwd' | 'stateDir';
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
  'breaker-cooldown': { option: 'breakerCooldown', arg: 'MS', help: 'intake pause at the breaker\'s first trip (it doubles while the storm lasts)' },
  'breaker-max-cooldown': { option: 'breakerMaxCooldown', arg: 'MS', help: 'ceiling of the breaker\'s growing cooldown' },
  'memory-limit': { option: 'memoryLimit', arg: 'MIB', help: "memory cap on each worker's whole process tree", fallback: 'none' },
  env: { option: 'env', arg: 'NAME[=VALUE]', help: "pass (or set) a variable in the workers' environment; repeatable" },
  cwd: { option: 'cwd', arg: 'DIR', help: 'working directory of the workers' },
  'log-level': { option: 'logLevel', arg: 'LEVEL', help: LOG_LEVELS.join(', ') },
  'state-dir': {
    option: 'stateDir',
    arg: 'DIR',
    help: 'where the ledger of live workers is kept, and on Node 22.1+ the module workers\' compile cache ("none": no ledger)',
    fallback: '$XDG_RUNTIME_DIR/tidepool, else <tmp>/tidepool-<uid>',
  },
  config: { arg: 'FILE', help: 'options from a JSON file or a .js/.mjs module exporting an object; flags and variables win' },
  inspect: { arg: 'URL', help: 'stream the pool and worker machines to a Stately inspector WebSocket (ws://HOST:PORT)' },
} as const satisfies Record<string, FlagDoc>;

/** The flags `tidepool serve` takes besides those of `run`; defaults from `SERVE_DEFAULTS`. */
const SERVE_FLAGS = {
  'http-port': { option: 'httpPort', arg: 'PORT', help: 'HTTP port; 0 picks a free one (its URL is printed on stdout)' },
  'http-host': { option: 'httpHost', arg: 'HOST', help: 'address to bind; anything but loopback needs a token' },
  'http-token': { option: 'httpToken', arg: 'TOKEN', help: 'bearer token the task routes require (TIDEPOOL_HTTP_TOKEN keeps it out of ps)', fallback: 'none' },
  'max-body': { option: 'maxBody', arg: 'BYTES', help: 'largest request body (413 past it)' },
  'max-queued': { option: 'maxQueued', arg: 'N', help: 'most tasks in flight (429 past it)' },
  'max-recent': { option: 'maxRecent', arg: 'N', help: 'final outcomes kept for GET /tasks/:id' },
  'drain-timeout': { option: 'drainTimeout', arg: 'MS', help: 'on SIGTERM/SIGINT, time for running tasks to finish' },
  'max-loop-delay': { option: 'maxLoopDelay', arg: 'MS', help: '/healthz answers 503 past this event loop delay' },
} as const satisfies Record<string, { option: keyof ServeOptions; arg: string; help: string; fallback?: string }>;

/**
 * The flags of `tidepool serve` that take tasks from RabbitMQ instead of the embedded queue
 * (the amqp source's options); `--amqp` is also read from AMQP_URL, as `tidepool enqueue` does.
 */
const AMQP_FLAGS = {
  amqp: { option: 'amqp', arg: 'URL', help: 'take tasks from RabbitMQ at this URL (also AMQP_URL) instead of the embedded queue; POST /tasks is then refused', fallback: 'none' },
  queue: { option: 'queue', arg: 'NAME', help: 'the work queue with --amqp; declared when it does not exist' },
  'queue-type': { option: 'queueType', arg: 'TYPE', help: 'quorum or classic, for the queue and its delay tiers', fallback: DEFAULT_QUEUE_TYPE },
  'delivery-limit': { option: 'deliveryLimit', arg: 'N', help: 'x-delivery-limit of a quorum queue', fallback: String(DEFAULT_DELIVERY_LIMIT) },
  'consumer-timeout': { option: 'consumerTimeout', arg: 'MS', help: "the broker's consumer_timeout; attempts must end within it", fallback: String(DEFAULT_CONSUMER_TIMEOUT) },
} as const satisfies Record<string, { option: string; arg: string; help: string; fallback?: string }>;

type Command = 'run' | 'serve';

const HEADINGS: Record<Command, string> = {
  run: `Usage: tidepool run [FILE|-] (--worker PATH | --command "CMD ARGS") [options]

Runs tasks (JSON Lines, one object per line; FILE or stdin) through a pool of worker
processes and writes one JSON line per task to stdout, in completion order.`,
  serve: `Usage: tidepool serve (--worker PATH | --command "CMD ARGS") [options]

Runs a pool of worker processes behind an HTTP task API: POST /tasks, GET /tasks/:id,
DELETE /tasks/:id, /healthz, /readyz, /metrics. SIGTERM or SIGINT drains and exits 0.`,
};

const EXIT_TEXT: Record<Command, string> = {
  run: 'Exit status: 0 every task resolved, 1 some failed, 2 bad usage.',
  serve: 'Exit status: 0 drained after a signal, 1 cannot listen or the broker (--amqp) cannot be reached, 2 bad usage,\n128+N stopped by a second signal N.',
};

/** Where the top-level help points for the other command. */
const SERVE_POINTER = `Other commands:
  tidepool serve --help      the HTTP service (task API, probes, metrics, dashboard)
  tidepool enqueue --help    publish tasks to RabbitMQ
  tidepool machines --help   the pool and worker machines as Mermaid, JSON or Stately code`;

/** A command's flag table: `serve` takes every flag of `run` and its own. */
const flagsOf = (command: Command): Record<string, FlagSpec> => (command === 'serve' ? { ...FLAGS, ...SERVE_FLAGS, ...AMQP_FLAGS } : FLAGS);

function usage(command: Command = 'run'): string {
  const row = (flag: string, doc: FlagDoc, defaults: Record<string, unknown>): [string, string] => {
    const known = doc.option !== undefined && doc.option in defaults ? defaults[doc.option] : undefined;
    const shown = known ?? doc.fallback;
    return [`--${flag} ${doc.arg}`, shown === undefined ? doc.help : `${doc.help} (default: ${shown})`];
  };
  const rows = Object.entries(FLAGS).map(([flag, doc]: [string, FlagDoc]) => row(flag, doc, DEFAULTS));
  if (command === 'serve') {
    rows.push(...Object.entries(SERVE_FLAGS).map(([flag, doc]) => row(flag, doc as unknown as FlagDoc, SERVE_DEFAULTS)));
    rows.push(...Object.entries(AMQP_FLAGS).map(([flag, doc]) => row(flag, doc as unknown as FlagDoc, {})));
  }
  rows.push(['--version', "tidepool's version"], ['-h, --help', 'this text']);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  return `${HEADINGS[command]}

Options (each also read from TIDEPOOL_<NAME>, e.g. TIDEPOOL_CONCURRENCY, and from the
--config file as the library's option name, e.g. "concurrency"):
${rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`).join('\n')}

${EXIT_TEXT[command]}`;
}

type Flag = keyof typeof FLAGS | keyof typeof SERVE_FLAGS | keyof typeof AMQP_FLAGS | 'help' | 'version';

/** parseArgs' flag table of a command. */
const flagConfig = (command: Command) =>
  ({
    ...Object.fromEntries(Object.keys(flagsOf(command)).map((f) => [f, { type: 'string' }])),
    env: { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  }) as const;

const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The flag behind a pool option's name (`worker.command` → `--command`). */
function flagFor(option: string): string {
  const [head, next] = option.split('.');
  if (head === 'worker') return next === 'command' ? '--command' : '--worker';
  return `--${kebab(head!)}`;
}

/**
 * Split a command line as a POSIX shell would (quotes, backslash escapes), with the
 * `shell-quote` library; `$NAME` stays literal (the caller's shell has expanded what it
 * meant to). Operators (`&&`, `|`, `>`, `;`) throw a UsageError: one executable is run, not a
 * shell; `sh -c '...'` runs a shell line.
 */
export function splitCommand(line: string, origin = '--command'): string[] {
  const words: string[] = [];
  for (const entry of parseShell(escapeInnerHashes(line), (name) => `$${name}`)) {
    if (typeof entry === 'string') words.push(entry);
    else if ('comment' in entry) break;
    else if (entry.op === 'glob') words.push(entry.pattern);
    else if (origin === 'TIDEPOOL_ENV') {
      // Its values are not echoed: they may be secrets.
      throw new UsageError(`TIDEPOOL_ENV holds NAME=VALUE words split as a shell would; quote a value holding ${JSON.stringify(entry.op)}`);
    } else {
      throw new UsageError(`${origin} runs one executable, not a shell line (found ${JSON.stringify(entry.op)}); use --command "sh -c '...'"`);
    }
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

/**
 * Where each option's value came from, by option (`concurrency`, `worker.module`): a flag
 * (`--concurrency`), a variable (`TIDEPOOL_CONCURRENCY`), or the config file (its name and a
 * colon, `tidepool.config.json:`; messages add the key).
 */
export type Origins = Record<string, string>;

/**
 * Flags, TIDEPOOL_* variables and the config file to pool options; per option a flag wins over
 * its variable, which wins over the file (either worker flag over both worker variables and
 * the file's worker; either worker variable over the file's). Values from the file keep their
 * JSON types, for the schema to judge. Returns the options and where each came from. Throws
 * UsageError naming the flag or variable at fault.
 */
export function optionsFromArgs(
  values: Partial<Record<Flag, string | string[] | boolean>>,
  env: NodeJS.ProcessEnv,
  file: ConfigFile | null = null,
): { options: PoolOptions; origins: Origins } {
  const origins: Origins = {};
  const flags: Record<string, FlagSpec> = FLAGS;
  const get = (flag: string, useEnv = true) => pick(flag, flags[flag]!, values, env, file, useEnv);
  // A worker given by flag wins over both worker variables, a variable over the file.
  const flagged = typeof values.worker === 'string' || typeof values.command === 'string';
  const worker = get('worker', !flagged);
  const command = get('command', !flagged);
  // Both are the file's worker when neither a flag nor a variable names one.
  const named = [worker, command].filter((g) => g !== undefined && g.layer !== 'file');
  if (named.length === 2) {
    throw new UsageError(`give a worker module or a command, not both (${worker!.origin} and ${command!.origin})`);
  }
  const chosen = named[0] ?? worker;
  if (chosen === undefined) {
    throw new UsageError('--worker PATH or --command "CMD ARGS" is required (or "worker" in the --config file)');
  }
  const options: Record<string, unknown> = {};
  if (chosen.layer === 'file') {
    options.worker = chosen.value;
    origins.worker = chosen.origin;
  } else if (chosen === worker) {
    options.worker = { module: chosen.value };
    origins['worker.module'] = chosen.origin;
  } else {
    const argv = splitCommand(chosen.value as string, chosen.origin);
    if (argv.length === 0) throw new UsageError(`${chosen.origin} must name an executable`);
    options.worker = { command: argv };
    origins['worker.command'] = chosen.origin;
  }
  const rest = optionsOf(flags, values, env, file, ['worker', 'command', 'env']);
  Object.assign(options, rest.options);
  Object.assign(origins, rest.origins);
  const envGiven = get('env');
  if (envGiven !== undefined) {
    // TIDEPOOL_ENV holds several entries, split as a shell would: FOO=bar BAZ='two words'.
    options.env = envGiven.layer === 'env' ? splitCommand(envGiven.value as string, 'TIDEPOOL_ENV') : envGiven.value;
    origins.env = envGiven.origin;
  }
  return { options: options as unknown as PoolOptions, origins };
}

/** The origin to name for an option (or an item of one: `env.2`, `worker.command`). */
function originOf(option: string, origins: Origins): string {
  const parts = option.split('.');
  for (let n = parts.length; n > 0; n--) {
    const origin = origins[parts.slice(0, n).join('.')];
    // A file's origin is its name: the key follows.
    if (origin !== undefined) return origin.endsWith(':') ? `${origin} ${option}` : origin;
  }
  return flagFor(option);
}

/** What was refused, for a message (never for `env`: its values may be secrets). */
function received(err: OptionError): string {
  if (err.received === undefined || err.option === 'env' || err.option.startsWith('env.')) return '';
  const text = JSON.stringify(err.received.value);
  return text === undefined ? '' : `, got ${text.length > 80 ? `${text.slice(0, 77)}...` : text}`;
}

/** The CLI's ledger: the given state directory, `none` for no ledger, else the default one. */
function withStateDir(options: PoolOptions, env: NodeJS.ProcessEnv): PoolOptions {
  if (options.stateDir === 'none') {
    const { stateDir: _none, ...rest } = options;
    return rest as PoolOptions;
  }
  return options.stateDir === undefined ? { ...options, stateDir: defaultStateDir(env) } : options;
}

/** `--inspect URL` (TIDEPOOL_INSPECT, or `inspect` in the file): the inspector's WebSocket, and where it was given. */
function inspectUrl(values: Record<string, unknown>, env: NodeJS.ProcessEnv, file: ConfigFile | null): { url: string; origin: string } | undefined {
  const given = pick('inspect', FLAGS.inspect, values, env, file);
  if (given === undefined) return undefined;
  if (typeof given.value !== 'string') throw new UsageError(`${given.origin}${given.layer === 'file' ? ' inspect' : ''} must be a ws:// URL, got ${JSON.stringify(given.value)}`);
  return { url: given.value, origin: given.layer === 'file' ? `${given.origin} inspect` : given.origin };
}

/**
 * `--amqp URL --queue NAME` and the amqp source's other flags (each also from its TIDEPOOL_*
 * variable and the config file; the URL also from AMQP_URL), or undefined for the embedded
 * queue. Throws UsageError when one of the amqp flags is given without `--amqp` or `--queue`;
 * the values themselves are judged by the source (`OptionError` naming the option).
 */
function amqpOptions(
  values: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  file: ConfigFile | null,
): { options: ServeAmqpOptions; origins: Origins } | undefined {
  const { options, origins } = optionsOf(AMQP_FLAGS, values, env, file);
  if (options.amqp === undefined && env.AMQP_URL !== undefined && env.AMQP_URL !== '') {
    options.amqp = env.AMQP_URL;
    origins.amqp = 'AMQP_URL';
  }
  const given = Object.keys(options);
  if (given.length === 0) return undefined;
  if (options.amqp === undefined) {
    throw new UsageError(`${origins[given[0]!]} needs --amqp URL (or AMQP_URL): the broker to take tasks from`);
  }
  if (options.queue === undefined) throw new UsageError(`${origins.amqp} needs --queue NAME (or TIDEPOOL_QUEUE): the work queue`);
  return { options: options as unknown as ServeAmqpOptions, origins };
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
    process.stderr.write(`${usage()}\n\n${SERVE_POINTER}\n`);
    return EXIT_CODES.USAGE;
  }
  if (command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(`${usage()}\n\n${SERVE_POINTER}\n`);
    return EXIT_CODES.OK;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    process.stdout.write(`tidepool ${version()}\n`);
    return EXIT_CODES.OK;
  }
  let origins: Origins = {};
  try {
    // Each command loads what it needs only: `run` does not pay for amqplib, nor `enqueue`
    // for the pool.
    if (command === 'machines') return (await import('./machines.js')).machinesCommand(rest, process.stdout, env);
    if (command === 'enqueue') return await (await import('./enqueue.js')).enqueueMain(rest, env);
    if (command !== 'run' && command !== 'serve') {
      throw new UsageError(
        `unknown command ${JSON.stringify(command)}; try "tidepool run --help", "tidepool serve --help", "tidepool enqueue --help" or "tidepool machines --help"`,
      );
    }
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: flagConfig(command), allowPositionals: true, strict: true });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    if (parsed.values.help) {
      process.stdout.write(`${usage(command)}\n`);
      return EXIT_CODES.OK;
    }
    if (parsed.values.version) {
      process.stdout.write(`tidepool ${version()}\n`);
      return EXIT_CODES.OK;
    }
    const values = parsed.values as Partial<Record<Flag, string | string[] | boolean>>;
    const configPath = typeof values.config === 'string' ? values.config : env.TIDEPOOL_CONFIG;
    const file = configPath === undefined ? null : await loadConfig(configPath, flagsOf(command));
    if (command === 'serve') {
      if (parsed.positionals.length > 0) throw new UsageError(`serve takes no input file (tasks come over HTTP), got ${JSON.stringify(parsed.positionals[0])}`);
      const pool = optionsFromArgs(values, env, file);
      const serve = optionsOf(SERVE_FLAGS, values, env, file);
      const broker = amqpOptions(values, env, file);
      origins = { ...pool.origins, ...serve.origins, ...broker?.origins };
      const options = withStateDir(pool.options, env);
      // Loaded only here: fastify and prom-client are no part of `tidepool run`'s start-up.
      const { serveCommand } = await import('./serve.js');
      return await serveCommand(options, serve.options as ServeOptions, {
        origins,
        inspect: inspectUrl(values, env, file),
        ...(broker ? { amqp: broker.options } : {}),
      });
    }
    if (parsed.positionals.length > 1) throw new UsageError(`run takes one input (FILE or -), got ${parsed.positionals.length}`);
    const given = optionsFromArgs(values, env, file);
    origins = given.origins;
    const options = withStateDir(given.options, env);
    const { runCommand } = await import('./run.js');
    return await runCommand(parsed.positionals[0] ?? '-', options, { origins, inspect: inspectUrl(values, env, file) });
  } catch (err) {
    if (err instanceof OptionError) {
      // Name the option the way it was given: a flag, a variable, or a key of the file.
      process.stderr.write(`tidepool: ${originOf(err.option, origins)} ${err.detail}${received(err)}\n`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof UsageError) {
      const help = command === 'run' || command === 'serve' || command === 'enqueue' ? `Try "tidepool ${command} --help".\n` : '';
      process.stderr.write(`tidepool: ${err.message}\n${help}`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof TidepoolError && (err.code === 'TIDEPOOL_ERR_INPUT' || err.code === 'TIDEPOOL_ERR_WORKER_LOAD')) {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.USAGE;
    }
    if (err instanceof TidepoolError && (err.code === 'TIDEPOOL_ERR_LISTEN' || err.code === 'TIDEPOOL_ERR_START_FAILED')) {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.FAILED;
    }
    throw err;
  }
}
