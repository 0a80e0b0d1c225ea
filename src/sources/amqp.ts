import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, Options } from 'amqplib';
import type { Logger } from 'pino';
import * as v from 'valibot';
import { OptionError, TidepoolError } from '../errors.js';
import type { TaskResult } from '../pool.js';
import type { Settlement } from '../settlement.js';
import { parseTask } from './parse.js';
import type { Delivery, Source, SourceConsumer } from './source.js';
import {
  DEFAULT_CONSUMER_TIMEOUT,
  DEFAULT_DELIVERY_LIMIT,
  DEFAULT_QUEUE_TYPE,
  declareTier,
  declareTopology,
  brokerUrl,
  MAX_QUEUE_NAME,
  queueNameFits,
  tierFor,
  topologyNames,
} from './amqp/topology.js';
import type { QueueType, TopologyOptions } from './amqp/topology.js';

export { DEFAULT_CONSUMER_TIMEOUT };

/**
 * Headers tidepool reads and writes on messages. `attempt` is the attempt a message is for
 * (absent: 1); a dead letter carries the outcome's `kind`, `message`, `reason` and `attempts`.
 */
export const HEADERS = {
  attempt: 'x-tidepool-attempt',
  kind: 'x-tidepool-kind',
  message: 'x-tidepool-message',
  reason: 'x-tidepool-reason',
  attempts: 'x-tidepool-attempts',
} as const;


export interface AmqpSourceOptions {
  /** `amqp://user:password@host:port/vhost` (`amqps://` for TLS). Never logged with its password. */
  url: string;
  /** The work queue; `<queue>.dead` and `<queue>.delay.<ms>` are declared beside it. */
  queue: string;
  /** Default `quorum`. A queue that exists must have been declared with the same type. */
  queueType?: QueueType;
  /** Quorum queues: `x-delivery-limit` (default 20). */
  deliveryLimit?: number;
  /**
   * The broker's consumer timeout in ms (RabbitMQ's `consumer_timeout`, default 30 min): a
   * delivery unsettled for longer closes its channel. The pool refuses to start when its
   * attempts could outlast it. Give the broker's value when it is not the default.
   */
  consumerTimeout?: number;
  /** First reconnect delay after the connection drops, doubled per failure (default 500 ms). */
  reconnectDelay?: number;
  /** Ceiling of the reconnect delay (default 30,000 ms). */
  reconnectMaxDelay?: number;
  /** Where reconnects and dropped settlements are logged (default: nowhere). */
  logger?: Logger;
}

const positive = v.pipe(v.number('must be a positive integer'), v.integer('must be a positive integer'), v.minValue(1, 'must be a positive integer'));
const optionsSchema = v.strictObject({
  url: v.pipe(v.string('must be an amqp:// or amqps:// URL'), v.regex(/^amqps?:\/\//, 'must be an amqp:// or amqps:// URL')),
  // RabbitMQ queue names: up to 255 bytes of UTF-8; `amq.` is reserved.
  queue: v.pipe(
    v.string('must be a queue name'),
    v.minLength(1, 'must be a queue name'),
    v.check(queueNameFits, `must be at most ${MAX_QUEUE_NAME} bytes (the broker allows 255; tidepool adds suffixes)`),
    v.check((q: string) => !q.startsWith('amq.'), 'must not start with "amq." (reserved by the broker)'),
  ),
  queueType: v.optional(v.picklist(['quorum', 'classic'], 'must be "quorum" or "classic"')),
  deliveryLimit: v.optional(positive),
  consumerTimeout: v.optional(positive),
  reconnectDelay: v.optional(positive),
  reconnectMaxDelay: v.optional(positive),
  logger: v.optional(v.any()),
});

/** One connection and its two channels; replaced whole when any of them fails. */
interface Session {
  model: ChannelModel;
  /** Consumes, acks, rejects. */
  consume: Channel;
  /** Publishes retries, dead letters and replies, with confirms. */
  publish: ConfirmChannel;
  /** The current consumer, or null while there is none. */
  consumerTag: string | null;
  /** That consumer's prefetch (RabbitMQ applies a prefetch to consumers started after it). */
  consumerPrefetch: number;
  closed: boolean;
}

/** A message this host holds unsettled. */
interface Held {
  delivery: Delivery;
  msg: ConsumeMessage;
  session: Session;
  /** The consumer it came to. */
  consumerTag: string;
  /** Handed to the pool (else waiting here for capacity). */
  given: boolean;
}

/**
 * Connect to `url` once, naming the connection `name` (as the broker's connection list shows
 * it). Rejects with `TIDEPOOL_ERR_BROKER` naming the URL without its password.
 */
export async function connectBroker(url: string, name: string): Promise<ChannelModel> {
  try {
    return await amqp.connect(url, { clientProperties: { connection_name: name } });
  } catch (err) {
    const why = (err as Error).message || (err as NodeJS.ErrnoException).code || 'unknown error';
    throw new TidepoolError('TIDEPOOL_ERR_BROKER', `cannot connect to RabbitMQ at ${brokerUrl(url)}: ${why}`, { cause: err });
  }
}

/**
 * The RabbitMQ source: a work queue shared by any number of hosts. Acks late (after the
 * outcome is safe), on the channel that delivered; retries are republished (confirmed) to a
 * delay tier and then acked; dead letters are published (confirmed) to `<queue>.dead` with the
 * outcome in headers and then acked; a message with `replyTo` gets its final outcome published
 * there (confirmed, with its `correlationId`) before the ack. The pool's capacity is the
 * broker's prefetch; a paused or closed host cancels its consumer and gives back what it has
 * not started. A lost connection voids every delivery (the broker requeues them) and is
 * retried with backoff. See docs/rabbitmq.md.
 *
 * Throws `OptionError` (TIDEPOOL_ERR_OPTION_INVALID) naming a bad option.
 *
 * @example
 * const pool = createPool({
 *   worker: { command: ['python3', 'job.py'] },
 *   concurrency: 8,
 *   source: new AmqpSource({ url: 'amqp://guest:guest@127.0.0.1:5672', queue: 'jobs' }),
 * });
 */
export class AmqpSource implements Source {
  readonly queue: string;
  /** The broker's consumer timeout (ms): the pool checks that an attempt cannot outlast it. */
  readonly deliveryTimeout: number;
  readonly #url: string;
  readonly #topology: TopologyOptions;
  readonly #reconnectDelay: number;
  readonly #reconnectMaxDelay: number;
  readonly #logger: Logger | undefined;
  #consumer: SourceConsumer | null = null;
  #session: Session | null = null;
  /** Unsettled deliveries by id: given to the pool, or waiting here for capacity. */
  readonly #held = new Map<string, Held>();
  /** Received but not yet given to the pool (the pool's capacity was lower for a moment). */
  #waiting: Held[] = [];
  /** Held deliveries the pool has. */
  #given = 0;
  /** The broker's prefetch: the pool's full capacity, from `open`. */
  #capacity = 0;
  /** The pool's capacity now (lower while workers are on their way out). */
  #prefetch = 0;
  /** Settlements under way (drained waits for them). */
  #settling = 0;
  #seq = 0;
  #paused = false;
  #closed = false;
  #drained = false;
  #disposed = false;
  /** A consumer (re)start under way. */
  #consuming: Promise<void> | null = null;
  #reconnectTimer: NodeJS.Timeout | null = null;
  #reconnects = 0;

  constructor(options: AmqpSourceOptions) {
    const parsed = v.safeParse(optionsSchema, options);
    if (!parsed.success) {
      const issue = parsed.issues[0];
      const path = (issue.path ?? []).map((item) => String(item.key)).join('.');
      const unknown = issue.type === 'strict_object' && path !== '';
      throw new OptionError(path === '' ? 'options' : path, unknown ? 'is not an option of the amqp source' : issue.message);
    }
    const o = parsed.output;
    this.#url = o.url;
    this.queue = o.queue;
    this.#topology = { queueType: o.queueType ?? DEFAULT_QUEUE_TYPE, deliveryLimit: o.deliveryLimit ?? DEFAULT_DELIVERY_LIMIT };
    this.deliveryTimeout = o.consumerTimeout ?? DEFAULT_CONSUMER_TIMEOUT;
    this.#reconnectDelay = o.reconnectDelay ?? 500;
    this.#reconnectMaxDelay = Math.max(o.reconnectMaxDelay ?? 30_000, this.#reconnectDelay);
    this.#logger = o.logger as Logger | undefined;
  }

  /** The broker URL without its password, as logs show it. */
  get url(): string {
    return brokerUrl(this.#url);
  }

  /** Whether the source is connected now (false while it reconnects). */
  get connected(): boolean {
    return this.#session !== null;
  }

  /**
   * Connect, declare the topology and start consuming at `prefetch`. Rejects with
   * `TIDEPOOL_ERR_BROKER` when the broker cannot be reached (the message names the URL without
   * its password) or holds the queue with other arguments.
   */
  async open(consumer: SourceConsumer, prefetch: number): Promise<void> {
    this.#consumer = consumer;
    this.#capacity = prefetch;
    this.#prefetch = prefetch;
    await this.#connect();
    this.#startConsumer();
  }

  prefetch(prefetch: number): void {
    this.#prefetch = prefetch;
    this.#pump();
  }

  /** Cancel the consumer and give back what the pool has not been handed yet. */
  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#stopConsumer();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#startConsumer();
  }

  async settle(delivery: Delivery, settlement: Settlement, result?: TaskResult): Promise<void> {
    const held = this.#take(delivery);
    if (!held) return;
    this.#settling++;
    try {
      const { msg, session } = held;
      const task = delivery.task;
      const props = msg.properties;
      if (settlement.action === 'retry') {
        const headers = { ...props.headers, [HEADERS.attempt]: settlement.attempt };
        const tier = tierFor(settlement.delay);
        const to = tier === 0 ? this.queue : await declareTier(session.publish, this.queue, tier, this.#topology);
        await publishConfirmed(session.publish, to, msg.content, { ...copyProps(props), messageId: task.id, headers });
      } else if (settlement.action === 'dead-letter') {
        const headers = {
          ...props.headers,
          [HEADERS.kind]: settlement.kind,
          [HEADERS.message]: clip(settlement.message),
          [HEADERS.reason]: clip(settlement.reason),
          [HEADERS.attempts]: delivery.attempt,
        };
        await publishConfirmed(session.publish, topologyNames(this.queue).dead, msg.content, { ...copyProps(props), messageId: task.id, headers });
      }
      if (settlement.action !== 'retry' && props.replyTo && result) await this.#reply(session, msg, result);
      this.#ack(held);
    } catch (err) {
      // The connection dropped under the settlement: the broker gives the message back (a
      // copy already published is a duplicate, never a loss).
      throw new TidepoolError('TIDEPOOL_ERR_BROKER', `the settlement of task ${JSON.stringify(delivery.task.id)} was not made safe; the broker delivers it again: ${(err as Error).message}`, { cause: err });
    } finally {
      this.#settling--;
      this.#afterSettle(held);
    }
  }

  async release(delivery: Delivery): Promise<void> {
    const held = this.#take(delivery);
    if (!held) return;
    this.#requeue(held);
    this.#afterSettle(held);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopConsumer();
    this.#checkDrained();
  }

  async dispose(): Promise<void> {
    this.#closed = true;
    this.#disposed = true;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const session = this.#session;
    this.#session = null;
    this.#held.clear();
    this.#waiting = [];
    this.#given = 0;
    this.#consumer = null;
    if (session) {
      session.closed = true;
      // Channels first: a channel's close goes after its own frames (an ack just sent), while
      // the connection's close could overtake them, and the broker would requeue what was acked.
      await Promise.all([session.consume.close().catch(() => {}), session.publish.close().catch(() => {})]);
      await session.model.close().catch(() => {});
    }
  }

  // ---- connection ----

  async #connect(): Promise<void> {
    const model = await connectBroker(this.#url, `tidepool ${this.queue} (pid ${process.pid})`);
    const session = { model, consumerTag: null, consumerPrefetch: 0, closed: false } as unknown as Session;
    const fail = (what: string) => (err?: Error) => this.#sessionFailed(session, err ?? new Error(`the ${what} closed`));
    // With no 'error' listener, an amqplib error is thrown from an event emitter.
    model.on('error', (err: Error) => this.#logger?.warn({ err: safeError(err) }, 'RabbitMQ connection error'));
    model.on('close', fail('connection'));
    model.on('blocked', (reason: string) => this.#logger?.warn({ reason }, 'RabbitMQ blocked publishing from this connection (resource alarm)'));
    try {
      session.consume = await model.createChannel();
      session.consume.on('error', (err: Error) => this.#logger?.warn({ err: safeError(err) }, 'RabbitMQ consume channel error'));
      session.consume.on('close', fail('consume channel'));
      session.publish = await model.createConfirmChannel();
      session.publish.on('error', (err: Error) => this.#logger?.warn({ err: safeError(err) }, 'RabbitMQ publish channel error'));
      session.publish.on('close', fail('publish channel'));
      await declareTopology(session.publish, this.queue, this.#topology);
    } catch (err) {
      session.closed = true;
      await model.close().catch(() => {});
      throw new TidepoolError(
        'TIDEPOOL_ERR_BROKER',
        `cannot declare queue ${JSON.stringify(this.queue)} at ${this.url} (${this.#topology.queueType}): ${(err as Error).message}`,
        { cause: err },
      );
    }
    if (this.#disposed) {
      await model.close().catch(() => {});
      return;
    }
    this.#session = session;
  }

  /** Any part of a session failed: every delivery it made is void; connect again. */
  #sessionFailed(session: Session, reason: Error): void {
    if (session.closed) return;
    session.closed = true;
    void session.model.close().catch(() => {});
    if (this.#session !== session) return;
    this.#session = null;
    this.#held.clear();
    this.#waiting = [];
    this.#given = 0;
    if (this.#disposed) return;
    this.#logger?.warn({ err: safeError(reason), url: this.url }, 'lost the RabbitMQ connection; what it delivered is requeued by the broker');
    this.#consumer?.lost(reason);
    if (this.#closed) {
      // A closing host has nothing left to consume or settle.
      this.#checkDrained();
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    const delay = Math.min(this.#reconnectMaxDelay, this.#reconnectDelay * 2 ** this.#reconnects);
    this.#reconnects++;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#connect().then(
        () => {
          if (this.#disposed || !this.#session) return;
          this.#reconnects = 0;
          this.#logger?.info({ url: this.url }, 'connected to RabbitMQ again');
          this.#consumer?.restored();
          this.#startConsumer();
        },
        (err: unknown) => {
          if (this.#disposed) return;
          this.#logger?.warn({ err: safeError(err as Error), retryIn: Math.min(this.#reconnectMaxDelay, this.#reconnectDelay * 2 ** this.#reconnects) }, 'cannot reconnect to RabbitMQ yet');
          this.#scheduleReconnect();
        },
      );
    }, delay);
  }

  // ---- consumer ----

  /**
   * Start a consumer whose prefetch is the capacity not taken by deliveries held from earlier
   * consumers (RabbitMQ counts a prefetch per consumer). None while nothing is free: a
   * settlement starts it.
   */
  #startConsumer(): void {
    const session = this.#session;
    if (!session || session.consumerTag !== null || this.#consuming || this.#paused || this.#closed) return;
    const free = this.#capacity - this.#held.size;
    if (free <= 0) return;
    this.#consuming = (async () => {
      await session.consume.prefetch(free);
      const { consumerTag } = await session.consume.consume(this.queue, (msg) => this.#onMessage(session, msg), { noAck: false });
      session.consumerTag = consumerTag;
      session.consumerPrefetch = free;
      // Paused, closed or lost while the consumer started: undo.
      if (this.#paused || this.#closed || this.#session !== session) this.#stopConsumer(session);
    })()
      .catch((err: unknown) => this.#sessionFailed(session, err as Error))
      .finally(() => {
        this.#consuming = null;
      });
  }

  /** Cancel the consumer (if any) and give back what is waiting here. */
  #stopConsumer(session = this.#session): void {
    for (const held of this.#waiting) {
      this.#held.delete(held.delivery.id);
      this.#requeue(held);
    }
    this.#waiting = [];
    if (!session || session.consumerTag === null) return;
    const tag = session.consumerTag;
    session.consumerTag = null;
    session.consume.cancel(tag).catch((err: unknown) => this.#sessionFailed(session, err as Error));
  }

  /**
   * After a settlement: the consumer may start (none while the capacity was taken), or grow
   * (one started with less than the full capacity, now that deliveries of an earlier one
   * have been settled).
   */
  #afterSettle(held: Held): void {
    const session = this.#session;
    if (session && !this.#paused && !this.#closed && !this.#consuming) {
      if (session.consumerTag === null) this.#startConsumer();
      else if (held.session === session && held.consumerTag !== session.consumerTag && session.consumerPrefetch < this.#capacity) {
        this.#stopConsumer(session);
        this.#startConsumer();
      }
    }
    this.#pump();
    this.#checkDrained();
  }

  #onMessage(session: Session, msg: ConsumeMessage | null): void {
    // Never throw into amqplib: it would close the connection.
    try {
      if (msg === null) {
        // The broker cancelled the consumer (the queue was deleted, or its leader moved):
        // start over on a new connection, which declares the topology again.
        this.#sessionFailed(session, new Error(`RabbitMQ cancelled the consumer of ${this.queue}`));
        return;
      }
      if (session !== this.#session || session.closed) return;
      if (this.#paused || this.#closed) {
        // Arrived after the cancel was sent: not ours to run.
        session.consume.nack(msg, false, true);
        return;
      }
      const props = msg.properties;
      const defaultId = typeof props.messageId === 'string' && props.messageId !== '' ? props.messageId : `amqp-${randomUUID()}`;
      const parsed = parseTask(msg.content, defaultId);
      const consumerTag = msg.fields.consumerTag;
      if (!parsed.ok) {
        this.#malformed(session, msg, parsed.id, parsed.message);
        return;
      }
      const attempt = attemptOf(props.headers);
      const id = `a${++this.#seq}`;
      const delivery: Delivery = parsed.text === undefined ? { id, task: parsed.task, attempt } : { id, task: parsed.task, attempt, text: parsed.text };
      const held: Held = { delivery, msg, session, consumerTag, given: false };
      this.#held.set(id, held);
      this.#waiting.push(held);
      this.#pump();
    } catch (err) {
      this.#logger?.error({ err }, 'could not take a RabbitMQ delivery; it is requeued');
      this.#sessionFailed(session, err as Error);
    }
  }

  /** Hand waiting deliveries to the pool while it has capacity. */
  #pump(): void {
    const consumer = this.#consumer;
    if (!consumer) return;
    while (!this.#paused && !this.#closed && this.#given < this.#prefetch && this.#waiting.length > 0) {
      const held = this.#waiting.shift()!;
      held.given = true;
      this.#given++;
      consumer.deliver(held.delivery);
    }
  }

  /** Not a task: published to `<queue>.dead` (kind malformed), then acked; the pool hears of it. */
  #malformed(session: Session, msg: ConsumeMessage, id: string, message: string): void {
    this.#settling++;
    const props = msg.properties;
    const headers = { ...props.headers, [HEADERS.kind]: 'malformed', [HEADERS.message]: clip(message), [HEADERS.reason]: clip(`malformed: ${message}`), [HEADERS.attempts]: 0 };
    void (async () => {
      await publishConfirmed(session.publish, topologyNames(this.queue).dead, msg.content, { ...copyProps(props), messageId: id, headers });
      if (props.replyTo) {
        const result: TaskResult = { id, status: 'failed', error: { kind: 'malformed', message }, attempts: 0, durationMs: 0 };
        await this.#reply(session, msg, result);
      }
      if (session.closed) return;
      session.consume.ack(msg);
      this.#consumer?.malformed({ id, message });
    })()
      .catch((err: unknown) => this.#logger?.warn({ err: safeError(err as Error), taskId: id }, 'a malformed message could not be dead-lettered; the broker delivers it again'))
      .finally(() => {
        this.#settling--;
        this.#checkDrained();
      });
  }

  /** Publish a final outcome to the message's `replyTo`, with its `correlationId`. */
  async #reply(session: Session, msg: ConsumeMessage, result: TaskResult): Promise<void> {
    const { replyTo, correlationId } = msg.properties;
    await publishConfirmed(session.publish, replyTo as string, Buffer.from(JSON.stringify(result)), {
      correlationId,
      contentType: 'application/json',
      persistent: true,
    });
  }

  // ---- bookkeeping ----

  /** The held entry of a delivery the pool may settle or release now (else null: void or done). */
  #take(delivery: Delivery): Held | null {
    const held = this.#held.get(delivery.id);
    if (!held || held.delivery !== delivery || !held.given) return null;
    this.#held.delete(delivery.id);
    this.#given--;
    return held;
  }

  /** Ack on the channel that delivered; if it closed, the broker has requeued the message. */
  #ack(held: Held): void {
    if (held.session.closed) throw new Error('the channel that delivered the message closed');
    held.session.consume.ack(held.msg);
  }

  /** Give a message back to the queue (nack with requeue: not a failure, not counted from RabbitMQ 4.3). */
  #requeue(held: Held): void {
    if (held.session.closed) return;
    try {
      held.session.consume.nack(held.msg, false, true);
    } catch {
      // The channel closed under us: the broker requeued it anyway.
    }
  }

  #checkDrained(): void {
    if (!this.#closed || this.#drained || this.#disposed || this.#held.size > 0 || this.#settling > 0) return;
    this.#drained = true;
    this.#consumer?.drained();
  }
}

/** Publish on a confirm channel and wait for the broker's confirm. */
function publishConfirmed(channel: ConfirmChannel, queue: string, content: Buffer, options: Options.Publish): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      channel.sendToQueue(queue, content, options, (err) => (err ? reject(err instanceof Error ? err : new Error(`publish not confirmed: ${String(err)}`)) : resolve()));
    } catch (err) {
      reject(err as Error);
    }
  });
}

/** The properties a republished message keeps (persistent whatever it was). */
function copyProps(p: ConsumeMessage['properties']): Options.Publish {
  const out: Options.Publish = { persistent: true };
  if (p.contentType) out.contentType = p.contentType;
  if (p.contentEncoding) out.contentEncoding = p.contentEncoding;
  if (p.correlationId) out.correlationId = p.correlationId;
  if (p.replyTo) out.replyTo = p.replyTo;
  if (p.timestamp) out.timestamp = p.timestamp;
  if (p.type) out.type = p.type;
  if (p.appId) out.appId = p.appId;
  return out;
}

/**
 * Characters of an outcome's message kept in a dead letter's header: a message's headers must
 * fit in one AMQP frame (128 KiB by default), and an error's message can carry a long stderr.
 */
export const MAX_HEADER_MESSAGE = 4096;

/** `text` cut to MAX_HEADER_MESSAGE characters, never inside a surrogate pair, marked when cut. */
function clip(text: string): string {
  if (text.length <= MAX_HEADER_MESSAGE) return text;
  let end = MAX_HEADER_MESSAGE;
  const code = text.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}

/** The attempt a message is for, from our header (absent or unreadable: 1). */
function attemptOf(headers: ConsumeMessage['properties']['headers']): number {
  const raw = headers?.[HEADERS.attempt];
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' ? Number(raw) : NaN;
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/** An error as logged: its message and code, never a URL with a password in it. */
function safeError(err: Error): { message: string; code?: unknown } {
  const message = String(err?.message ?? err).replace(/(amqps?:\/\/[^:@/\s]*):[^@/\s]*@/g, '$1@');
  return { message, code: (err as { code?: unknown })?.code };
}

/**
 * The amqp source for `queue` at `url`: `new AmqpSource({ url, queue, ...options })`.
 * Throws `OptionError` (TIDEPOOL_ERR_OPTION_INVALID) naming a bad option.
 *
 * @example
 * const pool = createPool({ worker: { module: './handler.js' }, source: createAmqpSource(process.env.AMQP_URL!, 'jobs') });
 */
export function createAmqpSource(url: string, queue: string, options: Omit<AmqpSourceOptions, 'url' | 'queue'> = {}): AmqpSource {
  return new AmqpSource({ ...options, url, queue });
}
