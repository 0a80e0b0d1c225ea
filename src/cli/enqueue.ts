import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { ConfirmChannel, ChannelModel, ConsumeMessage, Options } from 'amqplib';
import { TidepoolError, UsageError } from '../errors.js';
import { parseTask } from '../sources/parse.js';
import { connectBroker } from '../sources/amqp.js';
import { DEFAULT_DELIVERY_LIMIT, DEFAULT_QUEUE_TYPE, MAX_QUEUE_NAME, brokerUrl, declareTopology, queueNameFits } from '../sources/amqp/topology.js';
import type { QueueType } from '../sources/amqp/topology.js';
import type { TaskResult } from '../pool.js';
import { EXIT_CODES, openInput } from './input.js';
import { Terminal } from './terminal.js';

/** Publishes awaiting their confirm, at most: the publish loop waits for confirms past it. */
export const MAX_UNCONFIRMED = 1000;

const FLAGS = {
  amqp: { type: 'string' },
  queue: { type: 'string' },
  wait: { type: 'boolean' },
  'queue-type': { type: 'string' },
  'delivery-limit': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const ENQUEUE_USAGE = `Usage: tidepool enqueue --amqp URL --queue NAME [FILE|-] [--wait]

Publishes tasks (JSON Lines, one object per line; FILE or stdin) to a RabbitMQ queue as
persistent messages with publisher confirms. A line that is not a task is not published: it
is reported (as run reports it) and the rest go on.

Options:
  --amqp URL            the broker (also AMQP_URL), e.g. amqp://user:password@host:5672/vhost
  --queue NAME          the work queue (also TIDEPOOL_QUEUE); declared when it does not exist
  --wait                wait for each task's final outcome and print it as one JSON line,
                        as "tidepool run" does (the consumers reply to a queue of this run)
  --queue-type TYPE     quorum or classic, for a queue declared here (default: ${DEFAULT_QUEUE_TYPE})
  --delivery-limit N    x-delivery-limit of a quorum queue declared here (default: ${DEFAULT_DELIVERY_LIMIT})
  -h, --help            this text

Exit status: 0 every task published (with --wait: resolved), 1 some were not (malformed,
unconfirmed, or failed), 2 bad usage or the broker cannot be reached.`;

interface EnqueueOptions {
  url: string;
  queue: string;
  wait: boolean;
  queueType: QueueType;
  deliveryLimit: number;
}

/** Flags and variables to options; throws UsageError naming the one at fault. */
export function enqueueOptions(args: string[], env: NodeJS.ProcessEnv): { options: EnqueueOptions; input: string } | 'help' {
  let parsed;
  try {
    parsed = parseArgs({ args, options: FLAGS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const values = parsed.values;
  if (values.help) return 'help';
  if (parsed.positionals.length > 1) throw new UsageError(`enqueue takes one input (FILE or -), got ${parsed.positionals.length}`);
  const url = values.amqp ?? env.AMQP_URL;
  if (url === undefined || url === '') throw new UsageError('--amqp URL (or AMQP_URL) is required');
  const origin = values.amqp !== undefined ? '--amqp' : 'AMQP_URL';
  if (!/^amqps?:\/\//.test(url)) throw new UsageError(`${origin} must be an amqp:// or amqps:// URL, got ${JSON.stringify(brokerUrl(url))}`);
  const queue = values.queue ?? env.TIDEPOOL_QUEUE;
  if (queue === undefined || queue === '') throw new UsageError('--queue NAME (or TIDEPOOL_QUEUE) is required');
  if (!queueNameFits(queue)) {
    throw new UsageError(`${values.queue === undefined ? 'TIDEPOOL_QUEUE' : '--queue'} must be at most ${MAX_QUEUE_NAME} bytes (the broker allows 255; tidepool adds suffixes)`);
  }
  const queueType = values['queue-type'] ?? DEFAULT_QUEUE_TYPE;
  if (queueType !== 'quorum' && queueType !== 'classic') throw new UsageError(`--queue-type must be quorum or classic, got ${JSON.stringify(queueType)}`);
  let deliveryLimit = DEFAULT_DELIVERY_LIMIT;
  if (values['delivery-limit'] !== undefined) {
    const raw = values['delivery-limit'].trim();
    if (!/^[1-9]\d{0,8}$/.test(raw)) throw new UsageError(`--delivery-limit must be a positive whole number, got ${JSON.stringify(values['delivery-limit'])}`);
    deliveryLimit = Number(raw);
  }
  return { options: { url, queue, wait: values.wait === true, queueType, deliveryLimit }, input: parsed.positionals[0] ?? '-' };
}

/**
 * `tidepool enqueue`: JSON Lines in, one persistent, confirmed message per task out. Respects
 * the channel's flow control (waits for `drain` when `publish` says its buffer is full) and
 * keeps at most MAX_UNCONFIRMED publishes unconfirmed. With `wait`, the consumers reply to an
 * exclusive queue of this run and each final outcome is printed as `tidepool run` prints it
 * (`durationMs` measured here, from publish to reply). Resolves with the exit code; throws
 * `TIDEPOOL_ERR_BROKER` when the broker cannot be reached, `TIDEPOOL_ERR_INPUT` when the
 * input cannot be read.
 */
export async function enqueueCommand(input: string, o: EnqueueOptions): Promise<number> {
  const stream = await openInput(input);
  const model = await connectBroker(o.url, `tidepool enqueue ${o.queue} (pid ${process.pid})`);
  const terminal = process.stderr.isTTY ? new Terminal() : null;
  let failed = 0;
  let published = 0;
  let confirmed = 0;
  let replied = 0;
  let inputEnded = false;
  let stopping: NodeJS.Signals | null = null;
  let brokerError: Error | null = null;
  const startedAt = Date.now();
  const say = (text: string) => (terminal ? terminal.err(text) : process.stderr.write(text));
  const showProgress = (now = false) => {
    if (!terminal) return;
    const rate = ((o.wait ? replied : confirmed) / Math.max(0.001, (Date.now() - startedAt) / 1000)).toFixed(1);
    const outcomes = o.wait ? `, ${replied} done` : '';
    terminal.progress(`tidepool: ${confirmed}/${published}${inputEnded ? '' : '+'} confirmed${outcomes}, ${failed} failed, ${rate}/s`, now);
  };
  const print = (line: string) => (terminal ? terminal.out(line) : process.stdout.write(line));
  // Woken by confirms, drain, replies, a broker failure or a signal.
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const waitFor = async (ready: () => boolean) => {
    while (!ready() && !stopping && !brokerError) await new Promise<void>((resolve) => (wake = resolve));
  };
  let closing = false;
  const onBrokerClose = (err?: Error) => {
    if (closing) return;
    brokerError ??= err ?? new Error('the connection closed');
    poke();
  };
  model.on('error', () => {});
  model.on('close', onBrokerClose);
  const stop = (signal: NodeJS.Signals) => {
    stopping = signal;
    lines?.close();
    stream.destroy();
    poke();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  let channel: ConfirmChannel;
  const pending = new Map<string, { publishedAt: number }>();
  let replyTo: string | undefined;
  let lines: ReturnType<typeof createInterface> | null = null;
  try {
    channel = await openQueue(model, o);
    channel.on('error', () => {});
    channel.on('close', () => onBrokerClose(new Error('the channel closed')));
    channel.on('drain', poke);
    if (o.wait) {
      replyTo = (await channel.assertQueue('', { exclusive: true, autoDelete: true })).queue;
      await channel.consume(replyTo, (msg) => onReply(msg), { noAck: true });
    }
    function onReply(msg: ConsumeMessage | null): void {
      if (msg === null) return onBrokerClose(new Error('the reply queue was deleted'));
      const key = msg.properties.correlationId as string | undefined;
      const sent = key === undefined ? undefined : pending.get(key);
      if (!sent) return;
      pending.delete(key!);
      let result: TaskResult;
      try {
        result = JSON.parse(msg.content.toString('utf8')) as TaskResult;
      } catch {
        return;
      }
      replied++;
      if (result.status !== 'resolved') failed++;
      print(`${JSON.stringify({ ...result, durationMs: Date.now() - sent.publishedAt })}\n`);
      showProgress();
      poke();
    }
    let lineNo = 0;
    // Made here, right before it is read: lines read before the loop asks for them are lost.
    lines = createInterface({ input: stream, crlfDelay: Infinity });
    for await (const line of lines) {
      lineNo++;
      if (line.trim() === '') continue;
      const parsed = parseTask(line, `line:${lineNo}`);
      if (!parsed.ok) {
        failed++;
        if (o.wait) print(`${JSON.stringify({ id: parsed.id, status: 'failed', error: { kind: 'malformed', message: parsed.message }, attempts: 0, durationMs: 0 })}\n`);
        else say(`tidepool: line ${lineNo} not published: ${parsed.message}\n`);
        continue;
      }
      if (published - confirmed >= MAX_UNCONFIRMED) await waitFor(() => published - confirmed < MAX_UNCONFIRMED);
      if (stopping || brokerError) break;
      const key = String(lineNo);
      const options: Options.Publish = { persistent: true, contentType: 'application/json', messageId: parsed.task.id };
      if (replyTo !== undefined) {
        options.replyTo = replyTo;
        options.correlationId = key;
      }
      published++;
      if (o.wait) pending.set(key, { publishedAt: Date.now() });
      const roomLeft = channel.sendToQueue(o.queue, Buffer.from(line), options, (err) => {
        confirmed++;
        if (err) {
          failed++;
          pending.delete(key);
          say(`tidepool: line ${lineNo} (task ${JSON.stringify(parsed.task.id)}) was not confirmed by the broker\n`);
        }
        showProgress();
        poke();
      });
      // The socket's buffer is full: wait for 'drain' rather than buffering without bound.
      if (!roomLeft) {
        let drained = false;
        channel.once('drain', () => (drained = true));
        await waitFor(() => drained);
      }
      showProgress();
    }
    inputEnded = true;
    await waitFor(() => confirmed === published);
    if (o.wait) await waitFor(() => pending.size === 0);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    showProgress(true);
    terminal?.end();
    closing = true;
    await model.close().catch(() => {});
  }
  // Set by callbacks: TypeScript cannot see that.
  const signal = stopping as NodeJS.Signals | null;
  const lost = brokerError as Error | null;
  if (signal) return 128 + (signal === 'SIGINT' ? 2 : 15);
  if (lost) {
    const unconfirmed = published - confirmed;
    process.stderr.write(`tidepool: lost the connection to ${brokerUrl(o.url)} (${lost.message}); ${unconfirmed} publish(es) unconfirmed${o.wait ? `, ${pending.size} outcome(s) not received` : ''}\n`);
    return EXIT_CODES.FAILED;
  }
  return failed > 0 ? EXIT_CODES.FAILED : EXIT_CODES.OK;
}

/**
 * A confirm channel to publish on, the queue's topology declared if the queue does not exist
 * (an existing queue is used as it is, whatever its arguments).
 */
async function openQueue(model: ChannelModel, o: EnqueueOptions): Promise<ConfirmChannel> {
  // A passive check that fails closes its channel: it gets one of its own.
  const probe = await model.createChannel();
  probe.on('error', () => {});
  const exists = await probe.checkQueue(o.queue).then(
    () => true,
    () => false,
  );
  if (exists) await probe.close().catch(() => {});
  const channel = await model.createConfirmChannel();
  if (!exists) {
    try {
      await declareTopology(channel, o.queue, o);
    } catch (err) {
      throw new TidepoolError('TIDEPOOL_ERR_BROKER', `cannot declare queue ${JSON.stringify(o.queue)} at ${brokerUrl(o.url)}: ${(err as Error).message}`, { cause: err });
    }
  }
  return channel;
}

/** `tidepool enqueue ...`: resolves with the exit code. */
export async function enqueueMain(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const given = enqueueOptions(args, env);
  if (given === 'help') {
    process.stdout.write(`${ENQUEUE_USAGE}\n`);
    return EXIT_CODES.OK;
  }
  try {
    return await enqueueCommand(given.input, given.options);
  } catch (err) {
    if (err instanceof TidepoolError && (err.code === 'TIDEPOOL_ERR_BROKER' || err.code === 'TIDEPOOL_ERR_INPUT')) {
      process.stderr.write(`tidepool: ${err.message}\n`);
      return EXIT_CODES.USAGE;
    }
    throw err;
  }
}
