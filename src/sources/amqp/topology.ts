/**
 * The RabbitMQ topology of one tidepool queue, declared the same way by every host that
 * consumes it and by `tidepool enqueue`: the work queue, its dead-letter exchange and queue,
 * and the delay tiers that retries wait in. See docs/rabbitmq.md.
 */
import { redactUrl } from '../../logging.js';
import type { Channel, Options } from 'amqplib';

/** `quorum` (replicated, `x-delivery-limit`, at-least-once dead-lettering) or `classic`. */
export type QueueType = 'quorum' | 'classic';

/** What the topology of a queue depends on. */
export interface TopologyOptions {
  queueType: QueueType;
  /** Quorum queues only: deliveries of one message before the broker dead-letters it. */
  deliveryLimit: number;
}

/** Queue type by default: quorum (replicated; counts redeliveries). */
export const DEFAULT_QUEUE_TYPE: QueueType = 'quorum';

/**
 * Deliveries of one message (the first included) before a quorum queue dead-letters it. Our
 * own retries republish (a new message), so only redeliveries count: a message whose host
 * dies while running it, again and again. RabbitMQ 4.0+ defaults to 20, 3.x has no default.
 */
export const DEFAULT_DELIVERY_LIMIT = 20;

/**
 * RabbitMQ's default `consumer_timeout` (30 min, in ms), assumed when none is given: a client
 * cannot read the broker's setting over AMQP. Source:
 * https://www.rabbitmq.com/docs/consumers#acknowledgement-timeout
 */
export const DEFAULT_CONSUMER_TIMEOUT = 1_800_000;

/**
 * Delay tiers stay declared this long (ms) after their last use (`x-expires`) beyond their own
 * delay: a tier is redeclared before each retry published to it, so its messages always expire
 * into the work queue before the tier itself can expire.
 */
export const TIER_EXPIRY_MARGIN = 5 * 60_000;

/** The names of every queue and exchange of the topology of `queue`. */
export function topologyNames(queue: string): { dead: string; deadExchange: string; tier: (delay: number) => string } {
  return {
    dead: `${queue}.dead`,
    deadExchange: `${queue}.dead-letter`,
    tier: (delay) => `${queue}.delay.${delay}`,
  };
}

/**
 * The delay tier a retry waits in: the smallest step of a geometric grid (four steps per
 * doubling, so at most 19% longer than asked) that is not shorter than `delay` ms; 0 for no
 * delay. Every delay of a backoff with jitter lands on a few dozen tiers, not one queue per
 * value.
 */
export function tierFor(delay: number): number {
  if (delay <= 0) return 0;
  let step = Math.ceil(4 * Math.log2(delay));
  let tier = Math.ceil(2 ** (step / 4));
  // Floating point: never below the delay asked for, never a step too far.
  while (tier < delay) tier = Math.ceil(2 ** (++step / 4));
  while (step > 0 && Math.ceil(2 ** ((step - 1) / 4)) >= delay) tier = Math.ceil(2 ** (--step / 4));
  return tier;
}

const typeArgs = (o: TopologyOptions): Record<string, unknown> =>
  o.queueType === 'quorum'
    ? // At-least-once dead-lettering needs a quorum queue and reject-publish overflow (3.10+).
      { 'x-queue-type': 'quorum', 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' }
    : { 'x-queue-type': 'classic' };

/** The arguments of the work queue (`queue.declare`); enqueue and every consumer use the same. */
export function workQueueOptions(queue: string, o: TopologyOptions): Options.AssertQueue {
  const args: Record<string, unknown> = { ...typeArgs(o), 'x-dead-letter-exchange': topologyNames(queue).deadExchange };
  if (o.queueType === 'quorum') args['x-delivery-limit'] = o.deliveryLimit;
  return { durable: true, arguments: args };
}

/**
 * Declare the work queue, the dead-letter exchange (fanout) and `<queue>.dead` bound to it.
 * Idempotent; a queue that exists with other arguments makes the broker close the channel
 * (PRECONDITION_FAILED), which the caller reports.
 */
export async function declareTopology(channel: Channel, queue: string, o: TopologyOptions): Promise<void> {
  const names = topologyNames(queue);
  await channel.assertExchange(names.deadExchange, 'fanout', { durable: true });
  await channel.assertQueue(names.dead, { durable: true, arguments: { 'x-queue-type': o.queueType } });
  await channel.bindQueue(names.dead, names.deadExchange, '');
  await channel.assertQueue(queue, workQueueOptions(queue, o));
}

/**
 * Declare the delay tier of `delay` ms (see `tierFor`): its messages expire after the delay and
 * are dead-lettered back to the work queue through the default exchange. Called before every
 * retry published to it: a declaration counts as use, so the tier cannot expire (`x-expires`)
 * while a message waits in it.
 */
export async function declareTier(channel: Channel, queue: string, delay: number, o: TopologyOptions): Promise<string> {
  const name = topologyNames(queue).tier(delay);
  await channel.assertQueue(name, {
    durable: true,
    arguments: {
      ...typeArgs(o),
      'x-message-ttl': delay,
      'x-expires': delay + TIER_EXPIRY_MARGIN,
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': queue,
    },
  });
  return name;
}

/**
 * The longest work queue name, in bytes: the broker allows 255, and tidepool adds suffixes
 * (`.dead`, the delay tiers' names). One rule for every host and `tidepool enqueue`.
 */
export const MAX_QUEUE_NAME = 200;

/** Whether `queue` can name a tidepool work queue (at most MAX_QUEUE_NAME bytes). */
export const queueNameFits = (queue: string): boolean => Buffer.byteLength(queue) <= MAX_QUEUE_NAME;

/** A broker URL as it may be shown: without its password (`amqp://user@host:5672/vhost`). */
export const brokerUrl = (url: string): string => redactUrl(url, '');
