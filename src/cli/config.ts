import { spawnSync } from 'node:child_process';
import { lstatSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, UsageError } from '../errors.js';
import { MAX_WHOLE, unsafeDirectory } from '../options.js';

/**
 * The config file layer of the CLI (`--config FILE` or `TIDEPOOL_CONFIG`), generic over the
 * flag table: a file key is the option a flag sets (`concurrency`, `stateDir`), or the flag's
 * name in camelCase when it sets no pool option (`--http-port` → `httpPort`); the worker is
 * `worker: { module }` or `worker: { command: [...] }`, as in the library. Values keep their
 * JSON types and are validated by the same schema as flags (`resolveOptions`). Precedence, per
 * option: a flag, else its `TIDEPOOL_*` variable, else the file.
 */

/** What the config layer needs to know of a flag. */
export interface FlagSpec {
  /** The pool option it sets, if any. */
  option?: string;
  /** Its argument as the usage text names it: `PATH`, `DIR` and `FILE` are paths. */
  arg: string;
}

/** A loaded config file. */
export interface ConfigFile {
  /** The path as the user gave it (messages name the file so). */
  name: string;
  /** The options it sets, by file key, relative paths made absolute against its directory. */
  values: Record<string, unknown>;
}

/** One option's value and where it came from. */
export interface Given {
  value: unknown;
  /** `--concurrency`, `TIDEPOOL_CONCURRENCY`, or `tidepool.config.json:` (the key follows in messages). */
  origin: string;
  layer: 'flag' | 'env' | 'file';
}

const PATH_ARGS = new Set(['PATH', 'DIR', 'FILE']);
/** Flags a file cannot set: the file itself. */
const NOT_IN_FILE = new Set(['config']);

const camel = (flag: string) => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** The variable behind a flag: `--max-tasks-per-worker` → `TIDEPOOL_MAX_TASKS_PER_WORKER`. */
export const envName = (flag: string) => `TIDEPOOL_${flag.toUpperCase().replace(/-/g, '_')}`;

/** The key a file sets a flag's value under (`worker` for both `--worker` and `--command`). */
export function fileKey(flag: string, spec: FlagSpec): string | null {
  if (NOT_IN_FILE.has(flag)) return null;
  if (flag === 'worker' || flag === 'command') return 'worker';
  return spec.option ?? camel(flag);
}

/**
 * Read a config file: `.json`, or a `.js`/`.mjs`/`.cjs` module whose default export (or
 * `module.exports`) is an object. Relative paths in it (the worker module, `cwd`, `stateDir`,
 * any `PATH`/`DIR`/`FILE` option) are resolved against the file's directory; a command's words
 * are left as they are. Throws `ConfigError` (TIDEPOOL_ERR_CONFIG) naming the file, and the key
 * when one is at fault: unreadable, not JSON, a module that throws or exports no object, a key
 * that is no option.
 */
export async function loadConfig(name: string, flags: Record<string, FlagSpec>, cwd = process.cwd()): Promise<ConfigFile> {
  const path = resolve(cwd, name);
  const ext = extname(path);
  let data: unknown;
  if (ext === '.json') {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError(name, `cannot be read: ${(err as Error).message}`);
    }
    try {
      data = JSON.parse(text.replace(/^\uFEFF/, ''));
    } catch (err) {
      throw new ConfigError(name, `is not valid JSON: ${(err as Error).message}`);
    }
  } else if (ext === '.js' || ext === '.mjs' || ext === '.cjs') {
    try {
      if (!statSync(path).isFile()) throw new Error('it is not a file');
    } catch (err) {
      throw new ConfigError(name, `cannot be read: ${(err as Error).message}`);
    }
    let module: { default?: unknown };
    try {
      module = (await import(pathToFileURL(path).href)) as { default?: unknown };
    } catch (err) {
      throw new ConfigError(name, `could not be loaded: ${describeError(err, path)}`, undefined, { cause: err });
    }
    if (module.default === undefined) {
      throw new ConfigError(name, 'must export an object of options (export default { ... }, or module.exports = { ... })');
    }
    data = module.default;
  } else {
    throw new ConfigError(name, 'must be a .json file, or a .js, .mjs or .cjs module exporting an object');
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError(name, `must hold an object of options, got ${kindOf(data)}`);
  }

  const specs = new Map<string, FlagSpec>();
  for (const [flag, spec] of Object.entries(flags)) {
    const key = fileKey(flag, spec);
    if (key !== null) specs.set(key, spec);
  }
  const values: Record<string, unknown> = {};
  const dir = dirname(path);
  const absolute = (value: unknown) => (typeof value === 'string' && value !== '' && !isAbsolute(value) ? resolve(dir, value) : value);
  for (const [key, value] of Object.entries(data)) {
    const spec = specs.get(key);
    if (spec === undefined) throw new ConfigError(name, `${key} is not an option; the options are ${[...specs.keys()].join(', ')}`, key);
    if (key === 'worker' && typeof value === 'object' && value !== null && 'module' in value) {
      values.worker = { ...value, module: absolute((value as { module: unknown }).module) };
    } else {
      values[key] = PATH_ARGS.has(spec.arg) ? absolute(value) : value;
    }
  }
  return { name, values };
}

/**
 * The value of `flag` from the layer that wins: the flag itself, else its `TIDEPOOL_*`
 * variable, else the config file (typed as the file holds it). `useEnv: false` skips the
 * variable (a worker flag outranks both worker variables).
 */
export function pick(
  flag: string,
  spec: FlagSpec,
  values: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  file: ConfigFile | null,
  useEnv = true,
): Given | undefined {
  const v = values[flag];
  if (typeof v === 'string' || Array.isArray(v)) return { value: v, origin: `--${flag}`, layer: 'flag' };
  const name = envName(flag);
  if (useEnv && env[name] !== undefined) return { value: env[name], origin: name, layer: 'env' };
  const key = fileKey(flag, spec);
  if (file && key !== null && key in file.values) return { value: file.values[key], origin: `${file.name}:`, layer: 'file' };
  return undefined;
}

/** Arguments of flags that take a whole number (`--concurrency N`, `--timeout MS`, ...). */
const WHOLE_ARGS = new Set(['N', 'MS', 'MIB', 'BYTES', 'PORT']);

/**
 * A whole number from a flag or variable (digits only, at most MAX_WHOLE); throws UsageError
 * naming the flag or variable.
 */
export function wholeNumber({ value, origin }: { value: unknown; origin: string }): number {
  const raw = String(value).trim();
  if (!/^\d+$/.test(raw)) throw new UsageError(`${origin} must be a whole number, got ${JSON.stringify(value)}`);
  if (Number(raw) > MAX_WHOLE) throw new UsageError(`${origin} must be at most ${MAX_WHOLE}, got ${raw}`);
  return Number(raw);
}

/**
 * The options a flag table sets, each from the layer that wins (`pick`), by option name, with
 * where each came from. A flag whose argument is `N`, `MS`, `MIB`, `BYTES` or `PORT` takes a
 * whole number: from a flag or variable it is parsed (`wholeNumber`), from the file it keeps its
 * JSON type for the schema to judge; any other is a string (as typed, from the file). Flags
 * without an option, and those named in `skip`, are left out. Throws UsageError naming the flag
 * or variable at fault.
 */
export function optionsOf(
  table: Record<string, FlagSpec>,
  values: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  file: ConfigFile | null,
  skip: readonly string[] = [],
): { options: Record<string, unknown>; origins: Record<string, string> } {
  const options: Record<string, unknown> = {};
  const origins: Record<string, string> = {};
  for (const [flag, spec] of Object.entries(table)) {
    if (spec.option === undefined || skip.includes(flag)) continue;
    const given = pick(flag, spec, values, env, file);
    if (given === undefined) continue;
    options[spec.option] = WHOLE_ARGS.has(spec.arg) && given.layer !== 'file' ? wholeNumber(given) : given.value;
    origins[spec.option] = given.origin;
  }
  return { options, origins };
}

/**
 * Where the CLI keeps ledgers when `--state-dir` is not given: `$XDG_RUNTIME_DIR/tidepool`
 * (a per-user runtime directory, emptied at logout and boot), else `<tmp>/tidepool-<uid>`.
 * Created (mode 0700) when missing. Throws `UsageError` naming `--state-dir` when it cannot be
 * created, or is not a directory this user owns and no other user can write: another user's
 * ledger there could name this user's processes.
 */
export function defaultStateDir(env: NodeJS.ProcessEnv): string {
  const uid = process.getuid?.() ?? 0;
  const runtime = env.XDG_RUNTIME_DIR;
  const dir = runtime && isAbsolute(runtime) ? join(runtime, 'tidepool') : join(tmpdir(), `tidepool-${uid}`);
  const refuse = (why: string) => new UsageError(`the default state directory ${dir} ${why}; give --state-dir DIR (or --state-dir none for no ledger)`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw refuse(`cannot be created: ${(err as Error).message}`);
  }
  const stat = lstatSync(dir);
  if (!stat.isDirectory()) throw refuse('is not a directory');
  const unsafe = unsafeDirectory(dir);
  if (unsafe !== null) throw refuse(unsafe);
  return dir;
}

function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value === 'function' ? 'a function' : JSON.stringify(value)}`;
}

/**
 * An error thrown while a module loaded: its message, and where: the first frame of its stack,
 * or for a syntax error (whose stack has no frame in the file), the line `node --check` names.
 */
function describeError(err: unknown, path: string): string {
  if (!(err instanceof Error)) return String(err);
  // `/path/c.cjs:2` heading a CommonJS syntax error; `at file:///path/c.mjs:1:7`, or
  // `at fn (file:///path/c.mjs:1:7)`: the first that is in the file.
  const places = [...(err.stack ?? '').matchAll(/^(?:\s+at (?:.*\()?)?((?:file:|\/)[^)\s]+?:\d+(?::\d+)?)\)?$/gm)].map((m) => m[1]);
  let at = places.find((place) => place.startsWith(path) || place.startsWith(pathToFileURL(path).href));
  if (at === undefined && err instanceof SyntaxError) {
    const check = spawnSync(process.execPath, ['--check', path], { encoding: 'utf8', timeout: 10_000 });
    at = /^(\/\S+:\d+)$/m.exec(check.stderr ?? '')?.[1];
  }
  return at ? `${err.message} (at ${at})` : err.message;
}
