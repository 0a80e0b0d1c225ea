import { describe, expect, it } from 'vitest';
import { managerLogger, redactUrl } from '../src/logging.js';

/** The manager's logger (the pool's default one and the CLI's): what it redacts, what it keeps. */

function capture() {
  const lines: Record<string, unknown>[] = [];
  const logger = managerLogger('trace', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { logger, lines };
}

describe('the manager logger redacts secrets', () => {
  it('an AMQP URL keeps all but its password, at the top level and one object down', () => {
    const { logger, lines } = capture();
    logger.info({ amqp: 'amqp://user:hunter2@broker:5672/vhost' }, 'connecting');
    logger.info({ source: { url: 'amqps://app:p%40ss@mq.example/' } }, 'source');
    logger.info({ amqpUrl: 'amqp://guest@localhost' }, 'no password');
    expect(lines.map((l) => l.amqp ?? (l.source as { url?: string } | undefined)?.url ?? l.amqpUrl)).toEqual([
      'amqp://user:***@broker:5672/vhost',
      'amqps://app:***@mq.example/',
      'amqp://guest@localhost',
    ]);
  });

  it('env values, as NAME=VALUE entries or as an object; names and bare NAMEs stay', () => {
    const { logger, lines } = capture();
    logger.debug({ options: { env: ['API_KEY=abc123', 'PATH'] } }, 'options');
    logger.debug({ env: { API_KEY: 'abc123', HOME: '/root' } }, 'worker env');
    expect(lines[0]!.options).toEqual({ env: ['API_KEY=[redacted]', 'PATH'] });
    expect(lines[1]!.env).toEqual({ API_KEY: '[redacted]', HOME: '[redacted]' });
    expect(JSON.stringify(lines)).not.toContain('abc123');
  });

  it('in a child logger\'s bindings as in a line', () => {
    const { logger, lines } = capture();
    logger.child({ env: ['API_KEY=abc123'], amqp: 'amqp://u:abc123@h/' }).info('bound');
    expect(lines[0]).toMatchObject({ env: ['API_KEY=[redacted]'], amqp: 'amqp://u:***@h/' });
  });

  it('the HTTP token, tokens, passwords and authorization headers are replaced whole', () => {
    const { logger, lines } = capture();
    logger.info({ httpToken: 't0ken', req: { headers: { authorization: 'Bearer t0ken', host: 'h' } }, password: 'pw', token: 't0ken' }, 'request');
    expect(lines[0]).toMatchObject({ httpToken: '[redacted]', req: { headers: { authorization: '[redacted]', host: 'h' } }, password: '[redacted]', token: '[redacted]' });
    expect(JSON.stringify(lines)).not.toContain('t0ken');
  });

  it('redactUrl: URLs, and text that only looks like one', () => {
    expect(redactUrl('amqp://u:p@h/v')).toBe('amqp://u:***@h/v');
    expect(redactUrl('amqp://h/v')).toBe('amqp://h/v');
    expect(redactUrl('not a url //u:secret@h')).toBe('not a url //u:***@h');
  });
});
