import { describe, expect, it } from 'vitest';
import { OptionError, resolveOptions } from '../src/index.js';
import type { PoolOptions } from '../src/index.js';
import { workerEnv } from '../src/options.js';
import { fixture } from './helpers/procs.js';

const worker = { module: fixture('noop.js') };

function rejects(options: unknown): OptionError {
  try {
    resolveOptions(options as PoolOptions);
  } catch (err) {
    expect(err).toBeInstanceOf(OptionError);
    expect((err as OptionError).code).toBe('TIDEPOOL_ERR_OPTION_INVALID');
    return err as OptionError;
  }
  throw new Error(`accepted ${JSON.stringify(options)}`);
}

describe('resolveOptions', () => {
  it('refuses a memory cap a Node worker cannot start under, naming the floor; a command may go lower', () => {
    const err = rejects({ worker, memoryLimit: 1 });
    expect(err.option).toBe('memoryLimit');
    expect(err.detail).toMatch(/at least 64 \(MiB\) for a module worker/);
    expect(resolveOptions({ worker, memoryLimit: 64 }).memoryLimit).toBe(64);
    expect(resolveOptions({ worker: { command: ['cat'] }, memoryLimit: 1 }).memoryLimit).toBe(1);
  });

  it('a missing source is named when a Pool is made without createPool', async () => {
    const { Pool } = await import('../src/index.js');
    expect(() => new Pool({ worker })).toThrow(expect.objectContaining({ option: 'source' }));
  });

  it('refuses a whole number past a timer\'s limit, with the value it got; a 32-bit user id is no time', () => {
    const err = rejects({ worker, timeout: 2 ** 31 });
    expect([err.option, err.detail, err.received]).toEqual(['timeout', 'must be at most 2147483647', { value: 2 ** 31 }]);
    expect(rejects({ worker, concurrency: 'four' }).received).toEqual({ value: 'four' });
    expect(resolveOptions({ worker, uid: 2 ** 31 }).uid).toBe(2 ** 31);
  });

  it('stateDir: an existing, writable directory, made absolute', () => {
    expect(resolveOptions({ worker, stateDir: '.' }).stateDir).toBe(process.cwd());
    expect(resolveOptions({ worker }).stateDir).toBeUndefined();
    const err = rejects({ worker, stateDir: fixture('no-such-dir') });
    expect([err.option, err.detail]).toEqual(['stateDir', `is not a directory: ${fixture('no-such-dir')}`]);
    expect(rejects({ worker, stateDir: fixture('noop.js') }).option).toBe('stateDir');
  });

  it('fills defaults', () => {
    const o = resolveOptions({ worker });
    expect(o).toMatchObject({ attempts: 3, maxTasksPerWorker: 1, spares: 0, timeout: 900_000, memoryLimit: null });
    expect(o.concurrency).toBeGreaterThan(0);
    expect(o.worker).toEqual({ kind: 'module', path: fixture('noop.js') });
  });

  it.each([
    ['concurrency', { concurrency: 0 }],
    ['concurrency', { concurrency: 1.5 }],
    ['attempts', { attempts: -1 }],
    ['timeout', { timeout: '10' }],
    ['logLevel', { logLevel: 'loud' }],
    ['env.0', { env: ['BAD NAME'] }],
    ['turbo', { turbo: true }],
  ])('names %s when it is wrong', (option, extra) => {
    expect(rejects({ worker, ...extra }).option).toBe(option);
  });

  it('requires exactly one kind of worker', () => {
    expect(rejects({}).option).toBe('worker');
    expect(rejects({ worker: { module: 'a.js', command: ['cat'] } }).option).toBe('worker');
    expect(rejects({ worker: { command: [] } }).option).toBe('worker.command');
  });

  it('rejects a NUL character where the OS takes C strings', () => {
    const nul = rejects({ worker: { command: ['cat', 'a\0b'] } });
    expect(nul.option).toBe('worker.command.1');
    expect(nul.message).toMatch(/NUL/);
    expect(rejects({ worker, env: ['X=a\0b'] }).option).toBe('env.0');
    expect(rejects({ worker, cwd: '/tmp\0x' }).option).toBe('cwd');
  });

  it('checks the module exists once, up front', () => {
    expect(rejects({ worker: { module: '/nonexistent/handler.js' } }).option).toBe('worker.module');
  });

  it('checks options against each other', () => {
    expect(rejects({ worker, concurrency: 2, spares: 3 }).option).toBe('spares');
    expect(rejects({ worker: { command: ['cat'] }, maxTasksPerWorker: 2 }).option).toBe('maxTasksPerWorker');
    expect(rejects({ worker, retryDelay: 5000, retryMaxDelay: 10 }).option).toBe('retryMaxDelay');
    expect(rejects({ worker, breakerCooldown: 5000, breakerMaxCooldown: 10 }).option).toBe('breakerMaxCooldown');
    expect(rejects({ worker, breakerMaxCooldown: 0 }).message).toBe('breakerMaxCooldown must be a positive integer');
  });

  it('the breaker ceiling defaults to 5 min, or to breakerCooldown when that is longer', () => {
    expect(resolveOptions({ worker }).breakerMaxCooldown).toBe(300_000);
    expect(resolveOptions({ worker, breakerCooldown: 600_000 }).breakerMaxCooldown).toBe(600_000);
  });
});

describe('workerEnv', () => {
  it('passes the base allowlist and named variables, sets NAME=VALUE, drops the rest', () => {
    const env = workerEnv(['KEEP', 'SET=1=2', 'ABSENT'], { PATH: '/bin', HOME: '/root', KEEP: 'k', SECRET: 's' });
    expect(env).toEqual({ PATH: '/bin', HOME: '/root', KEEP: 'k', SET: '1=2' });
  });
});
