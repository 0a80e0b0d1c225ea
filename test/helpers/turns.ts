/**
 * Counts turns of the event loop: a chain of immediates, one link per turn, so that work
 * stamped with `turn.now` shows which macrotask it ran in.
 */
export function turnCounter(): { readonly now: number; stop(): void } {
  let now = 0;
  let on = true;
  const tick = () => {
    now++;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    get now() {
      return now;
    },
    stop: () => {
      on = false;
    },
  };
}

/** How many of `turns` fell in each turn, busiest first. */
export const perTurn = (turns: number[]): number[] => {
  const counts = new Map<number, number>();
  for (const t of turns) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts.values()].sort((a, b) => b - a);
};
