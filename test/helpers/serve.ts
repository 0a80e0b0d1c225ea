import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, expect } from 'vitest';
import { alive, descendantsOf, isAlive, until } from './procs.js';

/** Helpers for tests of `tidepool serve`: the real command as a child, HTTP calls, /proc, Prometheus text. */

const BIN = fileURLToPath(new URL('../../bin/tidepool', import.meta.url));

/** A `tidepool serve` child process. */
export interface ServeChild {
  child: ChildProcess;
  pid: number;
  /** The URL it printed on stdout once listening. */
  url: string;
  /** Every stderr line so far (its JSON log lines). */
  stderr: string[];
  /** Resolves with the exit code and signal once it has exited (and its pipes closed). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Every process seen below it (noted by `noteDescendants`), to check in /proc after it exits. */
  seen: Set<number>;
  /** Note every live descendant now (workers, their children, the spawn host). */
  noteDescendants(): void;
}

/** serve children not yet exited; each test must leave none (they are SIGKILLed and the test fails). */
const running = new Set<ChildProcess>();
/** Every process any serve child of the test had below it: all must be gone after the test. */
const descendants = new Set<number>();

afterEach(async () => {
  const left = [...running];
  for (const child of left) {
    const closed = new Promise((r) => child.once('close', r));
    child.kill('SIGKILL');
    await closed;
  }
  expect(left.map((c) => c.pid), 'serve processes still running after the test').toEqual([]);
  // The spawn host of an exited manager kills what it holds and exits: give it time to.
  await until(() => alive(descendants).length === 0, 'every process below serve to be gone', 10_000).catch(() => {});
  const still = alive(descendants);
  descendants.clear();
  expect(still, 'processes left behind by serve').toEqual([]);
});

/**
 * Start `bin/tidepool serve ARGS --http-port 0` and resolve once it prints its URL; rejects
 * with its stderr if it exits first.
 */
export function startServe(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ServeChild> {
  const child = spawn(process.execPath, [BIN, 'serve', '--http-port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  running.add(child);
  const stderr: string[] = [];
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    stderr.push(...lines);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => {
      running.delete(child);
      if (partial !== '') stderr.push(partial);
      resolve({ code, signal });
    });
  });
  const seen = new Set<number>();
  const noteDescendants = () => {
    for (const pid of descendantsOf(child.pid!)) {
      seen.add(pid);
      descendants.add(pid);
    }
  };
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const line = out.split('\n');
      if (line.length > 1) resolve({ child, pid: child.pid!, url: line[0], stderr, exited, seen, noteDescendants });
    });
    void exited.then(({ code, signal }) => reject(new Error(`serve exited (${code ?? signal}) before listening:\n${stderr.join('\n')}`)));
  });
}

/** Run `bin/tidepool ARGS` to its end (for usage errors and help). */
export function tidepoolOnce(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      running.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

/** An HTTP answer: status, headers, the body as text, and as JSON when it is JSON. */
export interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

/** One HTTP request (real HTTP, Node's fetch); `body` as given (string or bytes), or JSON for an object. */
export async function call(
  url: string,
  init: { method?: string; body?: unknown; type?: string; token?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...init.headers };
  let body: string | Blob | undefined;
  if (init.body !== undefined) {
    body = typeof init.body === 'string' ? init.body : init.body instanceof Uint8Array ? new Blob([new Uint8Array(init.body)]) : JSON.stringify(init.body);
    headers['content-type'] = init.type ?? 'application/json';
  }
  if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
  const res = await fetch(url, { method: init.method ?? (body === undefined ? 'GET' : 'POST'), headers, body });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** Poll `GET url` until `ok(answer)`; returns that answer. */
export async function pollUntil(url: string, ok: (a: Answer) => boolean, what: string, ms = 20_000, token?: string): Promise<Answer> {
  let last: Answer | undefined;
  const deadline = Date.now() + ms;
  for (;;) {
    last = await call(url, token === undefined ? {} : { token });
    if (ok(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last answer ${last.status} ${last.text}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Live processes whose process group is `pgid`, from /proc. */
export function groupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid && isAlive(Number(entry))) members.push(Number(entry));
    } catch {
      // gone in between
    }
  }
  return members;
}

/** One sample of the Prometheus text format. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\\]|\\\\.)*)"(?:,|$)/;

/**
 * Parse the Prometheus text exposition format (version 0.0.4) strictly: every line a `# HELP`,
 * a `# TYPE`, or a sample of a family declared by a `# TYPE` before it; throws naming the
 * first line that is none of these.
 */
export function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  text.split('\n').forEach((line, i) => {
    if (line === '') return;
    const meta = new RegExp(`^# (HELP|TYPE) (${NAME}) (.*)$`).exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(meta[3])) throw new Error(`line ${i + 1}: unknown type ${meta[3]}`);
        types.set(meta[2], meta[3]);
      }
      return;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`line ${i + 1} is not Prometheus text: ${line}`);
    const [, name, rawLabels = '', rawValue] = m;
    const family = [...types.keys()].find((f) => name === f || ['_bucket', '_sum', '_count'].some((s) => name === f + s));
    if (family === undefined) throw new Error(`line ${i + 1}: sample ${name} has no # TYPE before it`);
    const labels: Record<string, string> = {};
    for (let rest = rawLabels; rest !== ''; ) {
      const l = LABEL.exec(rest);
      if (!l) throw new Error(`line ${i + 1}: bad labels ${rawLabels}`);
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      rest = rest.slice(l[0].length);
    }
    // Values are read as Go's strconv.ParseFloat reads them (Prometheus' own parser): NaN in
    // any case (prom-client writes `Nan` for a gauge without data), +Inf, -Inf.
    const value = rawValue === '+Inf' ? Infinity : rawValue === '-Inf' ? -Infinity : /^nan$/i.test(rawValue) ? NaN : Number(rawValue);
    if (Number.isNaN(value) && !/^nan$/i.test(rawValue)) throw new Error(`line ${i + 1}: bad value ${rawValue}`);
    samples.push({ name, labels, value });
  });
  return { samples, types };
}

/** The value of the one sample named `name` whose labels include `labels`; throws if there is none. */
export function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length !== 1) throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)}`);
  return found[0].value;
}
