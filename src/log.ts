/** The one pino root logger of a CLI run: synchronous, on fd 2 (stderr), owned by the CLI. */
import type { Logger } from 'pino';

export const kLogLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof kLogLevels)[number];

export function makeLogger(level: LogLevel = 'warn', dest: number | NodeJS.WritableStream = 2): Logger {
  const pino = require('pino') as typeof import('pino');
  const stream = typeof dest === 'number' ? pino.destination({ dest, sync: true }) : dest;
  return pino({ level, base: { name: 'fixedram' } }, stream);
}

const kOrder: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };

/**
 * A logger that loads pino only when something is logged at or above `level`. Why: pino costs tens
 * of milliseconds to load, and a CLI run at the default level usually logs nothing.
 */
export function makeLazyLogger(level: LogLevel = 'warn', dest: number | NodeJS.WritableStream = 2): Logger {
  let real: Logger | undefined;
  const get = (): Logger => (real ??= makeLogger(level, dest));
  const noop = (): void => undefined;
  return new Proxy({} as Logger, {
    get(_target, prop) {
      if (typeof prop === 'string' && prop in kOrder && kOrder[prop as LogLevel] < kOrder[level]) return noop;
      const v = (get() as unknown as Record<string | symbol, unknown>)[prop];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(get()) : v;
    },
  });
}
