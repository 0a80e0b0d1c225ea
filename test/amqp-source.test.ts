import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { Delivery, OptionError } from '../src/index.js';
import { AmqpSource, HEADERS, MAX_HEADER_MESSAGE } from '../src/sources/amqp.js';
import type { AmqpSourceOptions } from '../src/sources/amqp.js';
import { topologyNames } from '../src/sources/amqp/topology.js';
import { describeSourceContract } from './helpers/source-contract.js';
import { AMQP_URL, Broker, closeConnectionsOf, uniqueQueue } from './helpers/broker.js';
import { fixture, until } from './helpers/procs.js';

const run = promisify(execFile);

let broker: Broker;
beforeAll(async () => {
  broker = await Broker.connect();
});
afterAll(async () => {
  await broker.close();
});

for (const queueType of ['quorum', 'classic'] as const) describeSourceContract(`amqp (${queueType} queue)`, async () => {
  const queue = uniqueQueue(`contract-${queueType}`);
  const source = new AmqpSource({ url: AMQP_URL, queue, queueType, reconnectDelay: 50 });
  return {
    source,
    publish: (payload) => broker.publish(queue, payload),
    deadLettered: async () =>
      (await broker.takeAll(topologyNames(queue).dead)).map((m) => ({ id: String(m.properties.messageId), reason: String(m.properties.headers?.[HEADERS.reason]) })),
    interrupt: async () => {
      expect(await closeConnectionsOf(queue)).toBe(1);
    },
    takeFromBroker: async () => {
      const msg = await broker.channel.get(queue, { noAck: true });
      if (msg === false) return null;
      return { id: JSON.parse(msg.content.toString()).id, attempt: Number(msg.properties.headers?.[HEADERS.attempt] ?? 1) };
    },
    cleanup: async () => {
      await source.dispose();
      await broker.deleteTopology(queue);
    },
  };
});

describe('amqp source', () => {
  const queues: string[] = [];
  const sources: AmqpSource[] = [];
  afterEach(async () => {
    for (const source of sources.splice(0)) await source.dispose();
    for (const queue of queues.splice(0)) await broker.deleteTopology(queue);
  });

  async function open(what: string, prefetch = 2, options: Partial<AmqpSourceOptions> = {}) {
    const queue = uniqueQueue(what);
    queues.push(queue);
    const source = new AmqpSource({ url: AMQP_URL, queue, reconnectDelay: 50, ...options });
    sources.push(source);
    const delivered: Delivery[] = [];
    const events: string[] = [];
    await source.open(
      { deliver: (d) => delivered.push(d), malformed: () => events.push('malformed'), drained: () => events.push('drained'), lost: () => events.push('lost'), restored: () => events.push('restored') },
      prefetch,
    );
    return { queue, source, delivered, events };
  }

  it('declares a quorum work queue with an explicit delivery limit, dead-lettering at least once to <queue>.dead', async () => {
    const { queue } = await open('topology', 2, { deliveryLimit: 7 });
    const { stdout } = await run('rabbitmqctl', ['list_queues', 'name', 'type', 'arguments', '--no-table-headers', '-q']);
    const line = stdout.split('\n').find((l) => l.startsWith(`${queue}\t`));
    expect(line).toContain('\tquorum\t');
    expect(line).toContain('{"x-delivery-limit",7}');
    expect(line).toContain('{"x-dead-letter-strategy","at-least-once"}');
    expect(line).toContain('{"x-overflow","reject-publish"}');
    expect(line).toContain(`{"x-dead-letter-exchange","${topologyNames(queue).deadExchange}"}`);
    expect(stdout.split('\n').some((l) => l.startsWith(`${topologyNames(queue).dead}\t`))).toBe(true);
  });

  it('a message redelivered past the delivery limit (its host lost it again and again) reaches <queue>.dead through the dead-letter exchange', async () => {
    const { queue, delivered, events } = await open('limit', 1, { deliveryLimit: 1 });
    await broker.publish(queue, { id: 'doomed' });
    await broker.publish(queue, { id: 'fine' });
    await until(() => delivered.length === 1, 'the delivery');
    // Each time, the connection drops with the delivery unsettled: the broker counts a return.
    // A limit of 1 allows one redelivery (x-delivery-count 1), then dead-letters it.
    for (let drop = 1; drop <= 2; drop++) {
      expect(delivered.at(-1)!.task.id).toBe('doomed');
      expect(await closeConnectionsOf(queue)).toBe(1);
      await until(() => events.filter((e) => e === 'restored').length === drop && delivered.length === drop + 1, 'the next delivery after the reconnect', 15_000);
    }
    expect(delivered.map((d) => d.task.id)).toEqual(['doomed', 'doomed', 'fine']);
    let dead = await broker.takeAll(topologyNames(queue).dead);
    for (const deadline = Date.now() + 10_000; dead.length === 0 && Date.now() < deadline; dead = await broker.takeAll(topologyNames(queue).dead)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(dead.map((m) => JSON.parse(m.content.toString()).id)).toEqual(['doomed']);
    expect(dead[0].properties.headers?.['x-death']).toEqual([expect.objectContaining({ queue })]);
  });

  it('a queue that exists with other arguments is a clear error at open, naming the queue', async () => {
    const queue = uniqueQueue('mismatch');
    queues.push(queue);
    await broker.channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'classic' } });
    const source = new AmqpSource({ url: AMQP_URL, queue });
    sources.push(source);
    const error = await source.open({ deliver() {}, malformed() {}, drained() {}, lost() {}, restored() {} }, 1).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'TIDEPOOL_ERR_BROKER', message: expect.stringContaining(JSON.stringify(queue)) });
    expect((error as Error).message).toMatch(/PRECONDITION_FAILED/);
  });

  it('an unreachable broker is TIDEPOOL_ERR_BROKER naming the URL without its password; the pool fails to start', async () => {
    const url = 'amqp://guest:s3cret-pass@127.0.0.1:1/';
    const source = new AmqpSource({ url, queue: 'nowhere' });
    expect(source.url).toBe('amqp://guest@127.0.0.1:1/');
    const error = (await source.open({ deliver() {}, malformed() {}, drained() {}, lost() {}, restored() {} }, 1).catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ code: 'TIDEPOOL_ERR_BROKER' });
    expect(error.message).toContain('amqp://guest@127.0.0.1:1/');
    expect(error.message).toContain('ECONNREFUSED');
    expect(error.message).not.toContain('s3cret');
    const pool = createPool({ worker: { module: fixture('echo.js') }, logLevel: 'silent', source: new AmqpSource({ url, queue: 'nowhere' }) });
    const started = (await pool.start().catch((e: unknown) => e)) as Error;
    expect(started).toMatchObject({ code: 'TIDEPOOL_ERR_START_FAILED', cause: { code: 'TIDEPOOL_ERR_BROKER' } });
    expect(started.message).not.toContain('s3cret');
    await pool.stop();
  });

  it('bad options are errors naming the option', () => {
    const make = (o: object) => () => new AmqpSource({ url: AMQP_URL, queue: 'q', ...o } as AmqpSourceOptions);
    expect(make({ url: 'http://x' })).toThrow(expect.objectContaining({ code: 'TIDEPOOL_ERR_OPTION_INVALID', option: 'url' }));
    expect(make({ queue: '' })).toThrow(expect.objectContaining({ option: 'queue' }));
    expect(make({ queue: 'amq.x' })).toThrow(expect.objectContaining({ option: 'queue' }));
    expect(make({ queueType: 'stream' })).toThrow(expect.objectContaining({ option: 'queueType' }));
    expect(make({ deliveryLimit: 0 })).toThrow(expect.objectContaining({ option: 'deliveryLimit' }));
    expect(make({ prefetch: 3 })).toThrow(expect.objectContaining({ option: 'prefetch', detail: 'is not an option of the amqp source' }));
  });

  it("a pool whose attempts could outlast the broker's consumer timeout refuses to start, naming both", async () => {
    const pool = createPool({
      worker: { module: fixture('echo.js') },
      logLevel: 'silent',
      timeout: 60_000,
      source: new AmqpSource({ url: AMQP_URL, queue: 'never-declared', consumerTimeout: 30_000 }),
    });
    const error = (await pool.start().catch((e: unknown) => e)) as OptionError;
    expect(error).toMatchObject({ code: 'TIDEPOOL_ERR_OPTION_INVALID', option: 'timeout' });
    expect(error.message).toContain('60000 ms');
    expect(error.message).toContain('30000 ms');
    await pool.stop();
  });

  it('a retry is a new message for the next attempt, the body as it was; its attempt survives a redelivery after a lost connection', async () => {
    const { queue, source, delivered, events } = await open('attempts', 1);
    const body = '{"id":"r","big":1970670598291982290}';
    await broker.publish(queue, body);
    await until(() => delivered.length === 1, 'the delivery');
    await source.settle(delivered[0], { action: 'retry', delay: 0, attempt: 2 });
    await until(() => delivered.length === 2, 'the retry');
    expect(delivered[1]).toMatchObject({ attempt: 2, text: body });
    expect(await closeConnectionsOf(queue)).toBe(1);
    await until(() => delivered.length === 3, 'the redelivery', 15_000);
    expect(events).toEqual(['lost', 'restored']);
    expect(delivered[2]).toMatchObject({ attempt: 2, text: body });
  });

  it('dead-letters with the outcome in headers, the body as it was', async () => {
    const { queue, source, delivered } = await open('dead');
    await broker.publish(queue, { id: 'x', n: 1 }, { headers: { 'x-mine': 'kept' } });
    await until(() => delivered.length === 1, 'the delivery');
    await source.settle(delivered[0], { action: 'dead-letter', reason: 'error (attempts exhausted)', kind: 'error', message: 'boom' });
    const [letter] = await broker.takeAll(topologyNames(queue).dead);
    expect(JSON.parse(letter.content.toString())).toEqual({ id: 'x', n: 1 });
    expect(letter.properties.messageId).toBe('x');
    expect(letter.properties.headers).toMatchObject({
      'x-mine': 'kept',
      [HEADERS.kind]: 'error',
      [HEADERS.message]: 'boom',
      [HEADERS.reason]: 'error (attempts exhausted)',
      [HEADERS.attempts]: 1,
    });
    expect(await broker.count(queue)).toBe(0);
  });

  it("cuts an outcome's long message in a dead letter's headers to fit a frame", async () => {
    const { queue, source, delivered } = await open('dead-long');
    await broker.publish(queue, { id: 'long' });
    await until(() => delivered.length === 1, 'the delivery');
    const message = 'é'.repeat(200_000);
    await source.settle(delivered[0], { action: 'dead-letter', reason: 'error (not retryable)', kind: 'error', message });
    const [letter] = await broker.takeAll(topologyNames(queue).dead);
    expect(letter.properties.headers?.[HEADERS.message]).toBe(`${'é'.repeat(MAX_HEADER_MESSAGE)}…`);
  });

  it('replies to replyTo with the correlationId before the ack, for outcomes and malformed payloads alike', async () => {
    const { queue, source, delivered } = await open('reply');
    const { queue: replies } = await broker.channel.assertQueue('', { exclusive: true });
    await broker.publish(queue, { id: 'ok' }, { replyTo: replies, correlationId: 'c-1' });
    await broker.publish(queue, 'not json', { replyTo: replies, correlationId: 'c-2', messageId: 'bad' });
    await until(() => delivered.length === 1, 'the delivery');
    const result = { id: 'ok', status: 'resolved' as const, result: { n: 42 }, attempts: 1, durationMs: 5 };
    await source.settle(delivered[0], { action: 'ack' }, result);
    // Once the settlement is safe, the reply is already on its queue.
    let got = await broker.takeAll(replies);
    for (const deadline = Date.now() + 10_000; got.length < 2 && Date.now() < deadline; ) got.push(...(await broker.takeAll(replies)));
    const byCorrelation = Object.fromEntries(got.map((m) => [m.properties.correlationId, JSON.parse(m.content.toString())]));
    expect(byCorrelation['c-1']).toEqual(result);
    expect(byCorrelation['c-2']).toMatchObject({ id: 'bad', status: 'failed', error: { kind: 'malformed', message: expect.stringMatching(/^not JSON/) }, attempts: 0 });
    expect(await broker.count(queue)).toBe(0);
  });

  it('after a pause, consumes again within the capacity the held deliveries leave, and grows back to it as they are settled', async () => {
    const { queue, source, delivered } = await open('regrow', 2);
    for (const id of ['a', 'b', 'c', 'd', 'e']) await broker.publish(queue, { id });
    await until(() => delivered.length === 2, 'two deliveries');
    source.pause();
    source.resume();
    // Both places are taken by deliveries from before the pause: nothing more comes.
    await new Promise((r) => setTimeout(r, 200));
    expect(delivered).toHaveLength(2);
    await source.settle(delivered[0], { action: 'ack' });
    await until(() => delivered.length === 3, 'one more, in the place freed');
    await source.settle(delivered[1], { action: 'ack' });
    // The consumer started with one place grows back to two.
    await until(() => delivered.length === 4, 'a second one at once, the capacity whole again');
    expect(delivered.map((d) => d.task.id)).toEqual(['a', 'b', 'c', 'd']);
  });
});
