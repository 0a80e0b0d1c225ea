import type { AnyActorRef, InspectionEvent, Observer } from 'xstate';

/** What XState's `inspect` option takes: an observer or a function. */
export type InspectObserver = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/**
 * Each worker machine runs as a root actor of its own (see `WorkerActors`: as XState children
 * they would cost the pool per task for every live worker). To an inspector they are still
 * the pool's children: their inspection events are passed on with the pool as the worker's
 * parent (`actorRef._parent`, which `@statelyai/inspect` reads for `parentId`) and as the
 * root (`rootId`) of every actor in a worker's system. The worker actors themselves are not
 * touched: a read-only view stands in for each in the events.
 */
export function asChildrenOf(parent: () => AnyActorRef | null, observer: InspectObserver): Observer<InspectionEvent> {
  const next = typeof observer === 'function' ? observer : (event: InspectionEvent) => observer.next?.(event);
  const views = new WeakMap<AnyActorRef, AnyActorRef>();
  const viewOf = (ref: AnyActorRef, pool: AnyActorRef): AnyActorRef => {
    let view = views.get(ref);
    if (!view) {
      view = new Proxy(ref, {
        get: (target, key, receiver) => (key === '_parent' ? pool : Reflect.get(target, key, receiver)),
      });
      views.set(ref, view);
    }
    return view;
  };
  return {
    next(event) {
      const pool = parent();
      if (!pool) return next(event);
      // The worker machine is the root of its system: the one actor without a parent.
      const ref = event.actorRef as AnyActorRef & { _parent?: AnyActorRef };
      next({ ...event, rootId: pool.sessionId, actorRef: ref._parent === undefined ? viewOf(ref, pool) : ref } as InspectionEvent);
    },
  };
}
