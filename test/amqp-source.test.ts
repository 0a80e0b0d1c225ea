import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AmqpSource } from '../src/sources/amqp.js';
import { HEADERS } from '../src/sources/amqp.js';
import { topologyNames } from '../src/sources/amqp/topology.js';
import { describeSourceContract } from './helpers/source-contract.js';
import { AMQP_URL, Broker, closeConnectionsOf, uniqueQueue } from './helpers/broker.js';

let broker: Broker;
beforeAll(async () => {
  broker = await Broker.connect();
});
afterAll(async () => {
  await broker.close();
});

describeSourceContract('amqp', async () => {
  const queue = uniqueQueue('contract');
  const source = new AmqpSource({ url: AMQP_URL, queue, reconnectDelay: 50 });
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
