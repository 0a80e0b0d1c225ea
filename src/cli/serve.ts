import type { AddressInfo } from 'node:net';
import { constants } from 'node:os';
import type { Logger } from 'pino';
import { OptionError, TidepoolError } from '../errors.js';
import { DEFAULTS } from '../options.js';
import type { PoolOptions } from '../options.js';
import { stderrLogger } from '../logging.js';
import { createService } from '../serve/create.js';
import { connectInspector } from './inspector.js';
import type { CliInspector } from './inspector.js';
import type { RunExtras } from './run.js';
import type { ServeOptions } from '../serve/options.js';


/**
 * The RabbitMQ source of `tidepool serve --amqp URL --queue NAME`, as the flags give it: the
 * broker URL (`amqp://user:password@host:5672/vhost`, never logged with its password), the
 * work queue, and the source's `queueType`, `deliveryLimit` and `consumerTimeout` (ms): see
 * `AmqpSourceOptions`.
 */
export interface ServeAmqpOptions {
  amqp: string;
  queue: string;
  queueType?: string;
  deliveryLimit?: number;
  consumerTimeout?: number;
}

/** Extras of `tidepool serve`: those of `run`, and the RabbitMQ source when tasks come from a broker. */
export interface ServeExtras extends RunExtras {
  amqp?: ServeAmqpOptions;
}

/** The flag's option name for each option of the amqp source (`url` is given as `--amqp`). */
const AMQP_OPTION_NAMES: Record<string, string> = { url: 'amqp' };

/**
 * `tidepool serve`: build the pool, start it (a handler that cannot load ends here,
 * `TIDEPOOL_ERR_WORKER_LOAD`), listen, and run until SIGTERM or SIGINT; then drain (see
 * `Service.drain`) and resolve with 0. A second signal during the drain stops at once and
 * exits with 128 + its number (130 for SIGINT, 143 for SIGTERM): work was cut short.
 *
 * The one line written to stdout is the server's URL once it listens (`http://127.0.0.1:8080`),
 * also logged as `{"msg":"listening","url":...}`: with `--http-port 0` it says which port was
 * picked. Throws `OptionError` for a bad serve option (the caller names the flag), and
 * `TIDEPOOL_ERR_LISTEN` when the address cannot be bound (the pool is stopped first).
 *
 * With `extras.amqp` the pool's source is the RabbitMQ queue (`createAmqpSource`) rather than
 * the embedded queue: `POST /tasks` is refused (405, see `buildApp`), `/readyz` is 503 while
 * the broker is unreachable, and a broker unreachable at start rejects with
 * `TIDEPOOL_ERR_START_FAILED` naming the URL without its password. A bad amqp option throws
 * `OptionError` naming it as the flag's option (`amqp`, `queue`, `queueType`, ...).
 */
export async function serveCommand(poolOptions: PoolOptions, serveOptions: ServeOptions, extras: ServeExtras = {}): Promise<number> {
  // `--inspect`: the machines go to an inspector's WebSocket too (see connectInspector).
  const inspector = extras.inspect ? await connectInspector(extras.inspect.url, extras.inspect.origin) : null;
  try {
    return await serveWith(inspector ? { ...poolOptions, inspect: inspector.inspect } : poolOptions, serveOptions, inspector, extras.origins ?? {}, extras.amqp);
  } finally {
    await inspector?.stop();
  }
}

async function serveWith(
  poolOptions: PoolOptions,
  serveOptions: ServeOptions,
  inspector: CliInspector | null,
  origins: Record<string, string>,
  broker: ServeAmqpOptions | undefined,
): Promise<number> {
  // The manager's logger redacts secrets (the token, env values, URL passwords): src/logging.ts.
  const stderr = stderrLogger(poolOptions.logLevel ?? DEFAULTS.logLevel);
  const logger: Logger = poolOptions.logger ?? stderr.logger;
  const { flush } = stderr;
  if (inspector && !inspector.connected) {
    logger.warn('the inspector (--inspect) did not answer; its events are kept (the latest 200) until it does');
  }
  const source = broker ? await amqpSource(broker, logger) : undefined;
  const { pool, service, app } = createService({ ...poolOptions, logger, ...(source ? { source } : {}) }, serveOptions);
  // What the service uses and where each value came from (flag, variable, config file); the
  // broker URL under `amqp`, which the logger redacts.
  logger.debug({ options: { ...poolOptions, logger: undefined }, serve: serveOptions, ...(broker ? { amqp: broker.amqp, queue: broker.queue } : {}), origins }, 'options');
  const { options } = service;
  let stopping: NodeJS.Signals | null = null;
  let signalled!: () => void;
  const firstSignal = new Promise<void>((resolve) => (signalled = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping === null) {
      stopping = signal;
      logger.info({ signal }, `${signal}: draining (a second SIGTERM or SIGINT stops at once)`);
      signalled();
      return;
    }
    const code = 128 + constants.signals[signal];
    logger.warn({ signal, exitCode: code }, `${signal} again: stopping now; workers die with the manager, unfinished tasks are handed back`);
    // The spawn host sees its pipe close and kills every worker's tree it holds.
    void flush().then(() => process.exit(code));
  };
  const cleanUp = async () => {
    service.close();
    await flush();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    await pool.start();
    if (stopping === null) {
      try {
        await app.listen({ port: options.httpPort, host: options.httpHost });
      } catch (err) {
        throw new TidepoolError('TIDEPOOL_ERR_LISTEN', `cannot listen on ${options.httpHost} port ${options.httpPort}: ${(err as Error).message}`, { cause: err });
      }
      const url = urlOf(app.server.address() as AddressInfo);
      logger.info({ url, auth: options.httpToken === null ? 'none (loopback only)' : 'bearer' }, 'listening');
      process.stdout.write(`${url}\n`);
    }
  } catch (err) {
    await pool.stop().catch(() => {});
    await app.close().catch(() => {});
    await cleanUp();
    throw err;
  }
  await firstSignal;
  // The server keeps answering during the drain (`/readyz` 503, `POST /tasks` 503, the rest as
  // usual); `?wait=true` requests still waiting are answered 503 once the pool has stopped.
  await service.drain();
  await app.close();
  logger.info('stopped');
  await cleanUp();
  return 0;
}

/** The amqp source of the flags (amqplib loaded only here); an `OptionError` names the flag's option. */
async function amqpSource(broker: ServeAmqpOptions, logger: Logger) {
  const { createAmqpSource } = await import('../sources/amqp.js');
  const { amqp, queue, ...rest } = broker;
  try {
    return createAmqpSource(amqp, queue, { ...(rest as object), logger });
  } catch (err) {
    if (err instanceof OptionError) throw new OptionError(AMQP_OPTION_NAMES[err.option] ?? err.option, err.detail, err.received);
    throw err;
  }
}

/** The URL a client would use for a bound address (`http://[::1]:8080` for IPv6). */
function urlOf(address: AddressInfo): string {
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}
