import type { AnyActorRef, InspectionEvent, Observer } from 'xstate';
import { UsageError } from '../errors.js';

/** A live connection to an inspector: the observer to give the pool, and how to end it. */
export interface CliInspector {
  inspect: Observer<InspectionEvent>;
  /** Whether the socket connected within `INSPECTOR_CONNECT_WAIT` at start. */
  connected: boolean;
  /** Send what is still queued (waiting at most `flushMs`), then close the socket. */
  stop(flushMs?: number): Promise<void>;
}

/** The inspector's address for a message: scheme, host and path; never its user, password or query. */
export function inspectorAddress(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(not a URL)';
  }
}

/** The protocol version the messages carry (`_version`): @statelyai/inspect's, whose messages these are. */
export const INSPECT_PROTOCOL_VERSION = '0.7.2';

/** How long the CLI waits for the inspector's socket at start, in ms. */
export const INSPECTOR_CONNECT_WAIT = 3_000;
/** Events kept while the socket is not open (the oldest are dropped past it): @statelyai/inspect's bound. */
export const INSPECTOR_BACKLOG = 200;
/** Bytes a socket may hold unsent before messages are dropped (an inspector that stopped reading). */
export const INSPECTOR_MAX_BUFFERED = 4 * 1024 * 1024;
/** Between attempts to reconnect, in ms. */
const RECONNECT_DELAY = 2_000;

/**
 * `--inspect ws://HOST:PORT`: stream the pool's inspection events (the pool machine, and every
 * worker as its child) to a WebSocket in the Stately inspector's protocol: one JSON message per
 * event, `@xstate.actor` (with `definition` and `parentId`), `@xstate.event`,
 * `@xstate.snapshot`, the messages `@statelyai/inspect`'s `createInspector` makes (a test
 * compares them with its own, field for field). Made here rather than by it: it defers every
 * event on a timer and serialises each snapshot twice, which cost reused workers half their
 * rate (docs/benchmark-notes.md, "Inspection"); and its WebSocket inspector retries a failed socket
 * on a timer it never clears, so a finished run would not exit. Waits up to
 * `INSPECTOR_CONNECT_WAIT` ms for the socket so a short run is seen from its first event;
 * reconnects while the pool runs, announcing the live actors again. Throws UsageError
 * (TIDEPOOL_ERR_USAGE) when `url` is not a ws:// or wss:// URL; `origin` names where it came
 * from (`--inspect`).
 */
export async function connectInspector(url: string, origin: string): Promise<CliInspector> {
  let parsed: URL | null = null;
  try {
    parsed = new URL(url);
  } catch {
    parsed = null;
  }
  if (!parsed || (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:')) {
    throw new UsageError(`${origin} must be a ws:// or wss:// URL (the inspector's WebSocket), got ${JSON.stringify(parsed ? inspectorAddress(url) : url.replace(/\/\/[^@/]*@/, '//***@'))}`);
  }
  // Loaded only when asked for: none of it is part of a plain run's start-up.
  const [{ WebSocket }, { configure }] = await Promise.all([import('ws'), import('safe-stable-stringify')]);
  // The events are plain JSON (the inspector has already cut snapshots to its depth, and actor
  // references serialise themselves); anything else is cut at the inspector's own depth.
  const safe = configure({ maximumDepth: 10 });
  const safeDefinition = configure({ maximumDepth: 10 });
  const toJson = (event: unknown): string => {
    try {
      return JSON.stringify(event) ?? 'null';
    } catch {
      return safe(event) ?? 'null';
    }
  };
  const backlog: string[] = [];
  /**
   * The announcement (`@xstate.actor`) of every actor still alive, by session: sent first on
   * every (re)connection, and after a stretch of dropped messages, so that an inspector that
   * comes late, comes back, or fell behind still knows the pool and every live worker.
   */
  const announced = new Map<string, string>();
  let socket: InstanceType<typeof WebSocket> | null = null;
  let stopped = false;
  let retry: NodeJS.Timeout | null = null;
  let firstOpen: ((open: boolean) => void) | null = null;
  /** Messages were dropped (the socket was away or behind) since the last announcement. */
  let behind = false;

  const keep = (texts: string[]) => {
    backlog.push(...texts);
    if (backlog.length > INSPECTOR_BACKLOG) backlog.splice(0, backlog.length - INSPECTOR_BACKLOG);
    behind = true;
  };
  const sendAll = (ws: InstanceType<typeof WebSocket>, texts: string[]) => {
    const raw = (ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
    raw?.cork();
    if (behind) {
      behind = false;
      for (const text of announced.values()) ws.send(text);
      for (const text of backlog.splice(0)) ws.send(text);
    }
    for (const text of texts) ws.send(text);
    raw?.uncork();
  };
  const connect = () => {
    const ws = new WebSocket(parsed.href);
    socket = ws;
    ws.on('open', () => {
      firstOpen?.(true);
      // A new connection knows nothing yet: the live actors first, then what was kept.
      behind = true;
      sendAll(ws, []);
    });
    // A refused or dropped socket is retried while the pool runs; its error says why.
    ws.on('error', () => firstOpen?.(false));
    ws.on('close', () => {
      if (socket === ws) socket = null;
      if (stopped) return;
      retry = setTimeout(connect, RECONNECT_DELAY);
      retry.unref();
    });
  };
  // Messages of one turn of the event loop go out together: one write to the socket, not one
  // per event (a task on a reused worker makes about 14). A socket that is away, or holds
  // more than INSPECTOR_MAX_BUFFERED bytes unsent (an inspector that does not read), gets
  // nothing: the latest INSPECTOR_BACKLOG messages are kept, memory stays bounded.
  let batch: string[] = [];
  const flush = () => {
    const texts = batch;
    batch = [];
    const ws = socket;
    if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > INSPECTOR_MAX_BUFFERED) keep(texts);
    else sendAll(ws, texts);
  };
  const send = (message: { type: string; sessionId: string; snapshot?: { status?: string } }) => {
    if (batch.length === 0) setImmediate(flush);
    const text = toJson(message);
    batch.push(text);
    if (message.type === '@xstate.actor') announced.set(message.sessionId, text);
    else if (message.type === '@xstate.snapshot' && message.snapshot?.status !== undefined && message.snapshot.status !== 'active') {
      announced.delete(message.sessionId);
    }
  };
  // A machine's definition, serialised once per machine (every worker shares one), as
  // @statelyai/inspect does: its config, functions as { type: name }, cut at depth 10.
  const definitions = new WeakMap<object, string>();
  /** Actors built and not yet started: announced with their first event. */
  const unannounced = new Map<string, () => void>();
  const definitionOf = (config: object): string => {
    let text = definitions.get(config);
    if (text === undefined) {
      text = safeDefinition(config, (_key: string, value: unknown) => (typeof value === 'function' ? { type: (value as { name: string }).name } : value)) ?? '{}';
      definitions.set(config, text);
    }
    return text;
  };
  const connected = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), INSPECTOR_CONNECT_WAIT);
    firstOpen = (open) => {
      firstOpen = null;
      clearTimeout(timer);
      resolve(open);
    };
    connect();
  });
  return {
    inspect: {
      next: (event) => {
        const ref = event.actorRef as AnyActorRef & { id: string; _parent?: AnyActorRef; logic?: { config?: object } };
        // The worker's `process` actor (a callback actor: no states, one per worker) is left
        // out: it would be a third of the stream and shows nothing a statechart can draw.
        if (ref.id === 'process' && ref._parent !== undefined) return;
        // The messages @statelyai/inspect's createInspector makes (its convertXStateEvent),
        // made here, at once and in order: it defers each event on a timer of its own and
        // serialises every snapshot twice, which cost reused workers half their rate.
        const common = { _version: INSPECT_PROTOCOL_VERSION, createdAt: Date.now().toString(), id: null, rootId: event.rootId, sessionId: ref.sessionId };
        if (event.type === '@xstate.actor') {
          // Made an actor's announcement comes while it is built, before it has a snapshot:
          // it goes out with the actor's first event (its start), in order.
          unannounced.set(ref.sessionId, () => {
            const config = ref.logic?.config;
            let name = ref.id;
            if (name === ref.sessionId && config) name = (config as { id?: string }).id ?? name;
            send({
              type: '@xstate.actor',
              name,
              definition: typeof config === 'object' ? definitionOf(config) : JSON.stringify({ id: name }),
              parentId: ref._parent?.sessionId,
              snapshot: ref.getSnapshot(),
              ...common,
            } as never);
          });
          return;
        }
        const announce = unannounced.get(ref.sessionId);
        if (announce) {
          unannounced.delete(ref.sessionId);
          announce();
        }
        if (event.type === '@xstate.event') {
          send({ type: '@xstate.event', event: event.event, sourceId: event.sourceRef?.sessionId, ...common } as never);
        } else if (event.type === '@xstate.snapshot') {
          send({ type: '@xstate.snapshot', event: event.event, snapshot: event.snapshot, ...common } as never);
        }
      },
    },
    connected,
    async stop(flushMs = 2_000) {
      // The last batch goes out on the turn after its first message: let it.
      await new Promise((resolve) => setImmediate(resolve));
      stopped = true;
      if (retry) clearTimeout(retry);
      const ws = socket;
      const deadline = Date.now() + flushMs;
      while (ws && ws.readyState === WebSocket.OPEN && ws.bufferedAmount > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      ws?.close();
      ws?.terminate();
    },
  };
}
