// What the benchmark scripts share: reading their settings, medians, and finding the
// processes a run left behind. Plain Node, no dependency.
import { readdirSync, readFileSync } from 'node:fs';

/** A fault of the benchmark's own (bad setting, failed reference): printed without a stack. */
export class BenchError extends Error {}

/**
 * An integer of at least `min` (1 unless said) from the environment, or `fallback` when unset
 * or empty. Throws a BenchError naming the variable and what it got otherwise.
 * @param {string} name
 * @param {number} fallback
 * @param {{ min?: number }} [options]
 */
export function intEnv(name, fallback, { min = 1 } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < min) {
    throw new BenchError(`${name} must be ${min === 1 ? 'a positive integer' : `an integer of at least ${min}`}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

/**
 * A BenchError that escapes (a bad setting read at the top of a script) ends the script with
 * its message alone and exit status 2; anything else with its stack and status 1.
 * @param {string} script the name the message starts with
 */
export function reportBenchErrors(script) {
  process.on('uncaughtException', (err) => {
    process.stderr.write(`${script}: ${err instanceof BenchError ? err.message : (err?.stack ?? err)}\n`);
    process.exit(err instanceof BenchError ? 2 : 1);
  });
}

/** @param {number[]} xs */
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Live processes (zombies aside) whose environment carries `name=value` (the marker a run gives
 * every process it starts), and, with `children`, any child of this process: what outlived a
 * run. Each as `pid (command line)`.
 * @param {string} name
 * @param {string} value
 * @param {{ children?: boolean }} [options]
 * @returns {string[]}
 */
export function leftovers(name, value, { children = false } = {}) {
  const found = [];
  const needle = `\0${name}=${value}\0`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (state === 'Z') continue;
      const marked = `\0${readFileSync(`/proc/${entry}/environ`, 'latin1')}\0`.includes(needle);
      if (marked || (children && Number(ppid) === process.pid)) {
        found.push(`${entry} (${readFileSync(`/proc/${entry}/cmdline`, 'latin1').replaceAll('\0', ' ').trim().slice(0, 120)})`);
      }
    } catch {
      // Gone, or not ours to read.
    }
  }
  return found;
}

/**
 * Wait up to `ms` for `leftovers(name, value, options)` to be empty (processes being reaped
 * take a moment); throws a BenchError listing what is still there.
 * @param {string} name
 * @param {string} value
 * @param {{ children?: boolean, ms?: number, what?: string }} [options]
 */
export async function assertNoLeftovers(name, value, { ms = 5_000, what = 'processes outlived their run', ...options } = {}) {
  const deadline = Date.now() + ms;
  let left = leftovers(name, value, options);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    left = leftovers(name, value, options);
  }
  if (left.length > 0) throw new BenchError(`${what}: ${left.join(', ')}`);
}
