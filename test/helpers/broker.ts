import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { afterAll, afterEach, beforeAll } from 'vitest';
import type { ChannelModel, ConfirmChannel, GetMessage } from 'amqplib';
import { tierFor, topologyNames } from '../../src/sources/amqp/topology.js';

const run = promisify(execFile);

/** The broker the tests use: RabbitMQ on loopback (AMQP_URL overrides). */
export const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

let made = 0;
/** A queue name no other test (or engineer's run) uses. */
export const uniqueQueue = (what: string): string => `tidepool-test-${what}-${process.pid}-${++made}-${Date.now().toString(36)}`;

/** Every delay tier a test could have declared (the grid up to 10 min). */
const TIERS = [...new Set(Array.from({ length: 80 }, (_, i) => tierFor(Math.ceil(2 ** (i / 4)))))];

/**
 * A connection of the test's own, with a confirm channel: publishes tasks, reads queues, and
 * deletes a test's queues and exchange afterwards.
 */
export class Broker {
  private constructor(
    readonly model: ChannelModel,
    readonly channel: ConfirmChannel,
  ) {}

  static async connect(): Promise<Broker> {
    const model = await amqp.connect(AMQP_URL);
    model.on('error', () => {});
    const channel = await model.createConfirmChannel();
    channel.on('error', () => {});
    return new Broker(model, channel);
  }

  /** Publish a payload (an object as JSON; text or bytes as they are), persistent, confirmed. */
  async publish(queue: string, payload: unknown, options: { replyTo?: string; correlationId?: string; messageId?: string; headers?: Record<string, unknown> } = {}): Promise<void> {
    const content =
      typeof payload === 'string' ? Buffer.from(payload) : payload instanceof Uint8Array ? Buffer.from(payload) : Buffer.from(JSON.stringify(payload));
    this.channel.sendToQueue(queue, content, { persistent: true, ...options });
    await this.channel.waitForConfirms();
  }

  /** Take every message now in `queue` (acked: they are gone afterwards), oldest first. */
  async takeAll(queue: string): Promise<GetMessage[]> {
    const out: GetMessage[] = [];
    for (;;) {
      const msg = await this.channel.get(queue, { noAck: true });
      if (msg === false) return out;
      out.push(msg);
    }
  }

  /** Messages ready and unacked in `queue` (as the broker counts them now). */
  async count(queue: string): Promise<number> {
    return (await this.channel.checkQueue(queue)).messageCount;
  }

  /** Delete the queue, its dead-letter queue and exchange, and its delay tiers. */
  async deleteTopology(queue: string): Promise<void> {
    const names = topologyNames(queue);
    await Promise.all([queue, names.dead, ...TIERS.map(names.tier)].map((q) => this.channel.deleteQueue(q)));
    await this.channel.deleteExchange(names.deadExchange);
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => {});
  }
}

/**
 * Close, from the broker's side, every connection a source of `queue` made (they name
 * themselves `tidepool <queue> (pid N)`): the source sees its connection drop, as in a
 * network fault or a broker restart.
 */
export async function closeConnectionsOf(queue: string): Promise<number> {
  const { stdout } = await run('rabbitmqctl', ['list_connections', 'pid', 'client_properties', '--no-table-headers', '-q']);
  const pids = stdout
    .split('\n')
    .filter((line) => line.includes(`"tidepool ${queue} (pid`))
    .map((line) => line.split('\t')[0]);
  for (const pid of pids) await run('rabbitmqctl', ['close_connection', pid, 'closed by a tidepool test']);
  return pids.length;
}

/**
 * The broker connection of a test file, and the queues its tests make: each test's queues
 * (and their dead-letter queue, exchange and delay tiers) are deleted after it. Call it before
 * `trackPools`: after-each hooks run last-registered first, so the pools are stopped before
 * their queues are deleted.
 */
export function trackQueues(): { broker: () => Broker; newQueue: (what: string) => string } {
  let broker: Broker | null = null;
  const queues: string[] = [];
  beforeAll(async () => {
    broker = await Broker.connect();
  });
  afterAll(async () => {
    await broker?.close();
  });
  afterEach(async () => {
    for (const queue of queues.splice(0)) await broker!.deleteTopology(queue);
  });
  return {
    broker: () => broker!,
    newQueue: (what) => {
      const queue = uniqueQueue(what);
      queues.push(queue);
      return queue;
    },
  };
}
