/**
 * The logger of a CLI run. By default warnings and errors reach stderr as human lines
 * (`fixedram: warning: …`); pino JSON lines only when asked (`--log-level info|debug|trace`, or
 * `--log-format json`). The core takes any pino-compatible Logger and logs `(obj?, msg)`.
 */
import type { Logger } from 'pino';

export const kLogLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof kLogLevels)[number];
export const kLogFormats = ['auto', 'human', 'json'] as const;
export type LogFormat = (typeof kLogFormats)[number];

const kOrder: Record<LogLevel, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Infinity,
};
const kHumanName: Record<string, string> = {
  fatal: 'error',
  error: 'error',
  warn: 'warning',
  info: 'info',
  debug: 'debug',
  trace: 'trace',
};

/** Where log lines go: a function that writes one line (it clears a progress bar first). */
export type LineSink = (line: string) => void;

export function makeLogger(level: LogLevel = 'warn', dest: number | { write(s: string): unknown } = 2): Logger {
  const pino = require('pino') as typeof import('pino');
  const stream = typeof dest === 'number' ? pino.destination({ dest, sync: true }) : dest;
  return pino({ level, base: { name: 'fixedram' } }, stream as import('pino').DestinationStream);
}

/**
 * A logger that loads pino only when something is logged at or above `level`. Why: pino costs tens
 * of milliseconds to load, and a CLI run at the default level usually logs nothing.
 */
export function makeLazyLogger(level: LogLevel = 'warn', dest: number | { write(s: string): unknown } = 2): Logger {
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

/** The text of a pino-style call `(obj, msg)` or `(msg)` as one human line. */
function humanText(args: unknown[]): string {
  const [first, second] = args;
  if (typeof first === 'string') return first;
  const msg = typeof second === 'string' ? second : '';
  if (first instanceof Error) return msg ? `${msg}: ${first.message}` : first.message;
  const obj = (first ?? {}) as Record<string, unknown>;
  const where = typeof obj.path === 'string' ? obj.path : typeof obj.file === 'string' ? obj.file : undefined;
  // Names are JSON-quoted so that control characters never reach the terminal raw.
  return where !== undefined ? `${msg} (${JSON.stringify(where)})` : msg;
}

/** A logger printing `fixedram: warning: message` lines; no pino involved. */
export function makeHumanLogger(level: LogLevel, sink: LineSink): Logger {
  const methods: Record<string, (...args: unknown[]) => void> = {};
  for (const name of ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const) {
    methods[name] =
      kOrder[name] < kOrder[level]
        ? () => undefined
        : (...args: unknown[]) => sink(`fixedram: ${kHumanName[name]}: ${humanText(args)}`);
  }
  const logger: Record<string, unknown> = {
    ...methods,
    level,
    isLevelEnabled: (l: LogLevel) => kOrder[l] >= kOrder[level],
    child: () => logger,
    silent: () => undefined,
  };
  return logger as unknown as Logger;
}

/** The CLI's logger for `--log-level` / `--log-format`. */
export function makeCliLogger(level: LogLevel, format: LogFormat, sink: LineSink): Logger {
  const json = format === 'json' || (format === 'auto' && kOrder[level] < kOrder.warn);
  if (!json) return makeHumanLogger(level, sink);
  return makeLazyLogger(level, { write: (s: string) => sink(s.endsWith('\n') ? s.slice(0, -1) : s) });
}
