import type { ChildProcess } from 'node:child_process';
import { afterEach, expect } from 'vitest';

/**
 * Child processes of a test file (CLIs it runs): `add` one as it starts; it leaves the set when
 * it closes. One still running after its test (the test failed or forgot it) is SIGKILLed and
 * the test fails: with the manager killed, its spawn host kills the workers' groups.
 */
export function trackChildren(what = 'CLIs'): { add(child: ChildProcess): void } {
  const running = new Set<ChildProcess>();
  afterEach(async () => {
    const left = [...running];
    for (const child of left) {
      const closed = new Promise((r) => child.once('close', r));
      child.kill('SIGKILL');
      await closed;
    }
    expect(left.map((c) => c.pid), `${what} still running after the test`).toEqual([]);
  });
  return {
    add(child) {
      running.add(child);
      child.once('close', () => running.delete(child));
    },
  };
}
