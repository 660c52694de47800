/** The one pino root logger of a CLI run: synchronous, on fd 2 (stderr), owned by the CLI. */
import pino, { type Logger } from 'pino';

export const kLogLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof kLogLevels)[number];

export function makeLogger(level: LogLevel = 'warn', dest: number | NodeJS.WritableStream = 2): Logger {
  const stream = typeof dest === 'number' ? pino.destination({ dest, sync: true }) : dest;
  return pino({ level, base: { name: 'fixedram' } }, stream);
}
