/**
 * Where a command's time went, for its debug log (and update's --json `phases`): milliseconds per
 * phase, in the order the phases ended. 'startup' is the process's age when the clock was made
 * (for the CLI: node and the modules); each lap(name) closes the phase since the previous lap (a
 * name lapped again adds up); total() is the time from the clock's making to the last lap, which
 * the laps add up to.
 */
export interface PhaseClock {
  readonly ms: Record<string, number>;
  lap(name: string): void;
  total(): number;
}

export function phaseClock(): PhaseClock {
  const round = (ns: bigint): number => Math.round(Number(ns) / 1e5) / 10;
  const ms: Record<string, number> = { startup: Math.round(process.uptime() * 1e4) / 10 };
  const made = process.hrtime.bigint();
  let at = made;
  return {
    ms,
    lap(name: string): void {
      const now = process.hrtime.bigint();
      ms[name] = (ms[name] ?? 0) + round(now - at);
      at = now;
    },
    total: () => round(at - made),
  };
}
