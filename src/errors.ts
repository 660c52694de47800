/**
 * fixedram's errors. Two families:
 * - system errors shaped exactly like Node's fs errors (`code` = errno name, `errno` negative,
 *   `syscall`, `path`), built by {@link sysError};
 * - {@link FixedramError}s with a string `code` (`ERR_…`) and the exit status they map to.
 * Both cross worker threads as plain {@link ErrorRecord}s ({@link toRecord} / {@link fromRecord}).
 */
import * as util from 'node:util';

/** Exit statuses, as documented in the README and in `--help`. */
export const ExitCode = {
  ok: 0,
  integrity: 1,
  usage: 2,
  invalid: 3,
  system: 4,
  interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Where in a snapshot or block something went wrong. */
export interface ErrorContext {
  block?: string;
  page?: number;
  offset?: number;
  path?: string;
}

export class FixedramError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  block?: string;
  page?: number;
  offset?: number;
  path?: string;

  constructor(code: string, exitCode: ExitCode, message: string, context: ErrorContext = {}) {
    super(message);
    this.name = 'FixedramError';
    this.code = code;
    this.exitCode = exitCode;
    Object.assign(this, definedOnly(context));
  }
}

/** A bad command line or option value (exit 2). */
export function usageError(message: string, context: ErrorContext = {}): FixedramError {
  return new FixedramError('ERR_USAGE', ExitCode.usage, message, context);
}

/** A snapshot that is invalid, truncated, incomplete or unsupported (exit 3). */
export function snapshotError(
  code: 'ERR_SNAPSHOT_INVALID' | 'ERR_SNAPSHOT_TRUNCATED' | 'ERR_SNAPSHOT_INCOMPLETE' | 'ERR_SNAPSHOT_UNSUPPORTED',
  message: string,
  context: ErrorContext = {},
): FixedramError {
  return new FixedramError(code, ExitCode.invalid, message, context);
}

/** Page data that fails its checksum or differs from a live file (exit 1). */
export function integrityError(message: string, context: ErrorContext = {}): FixedramError {
  return new FixedramError('ERR_INTEGRITY', ExitCode.integrity, message, context);
}

/** The run was cancelled by a signal (exit 130). */
export function interruptedError(message: string): FixedramError {
  return new FixedramError('ERR_INTERRUPTED', ExitCode.interrupted, message);
}

/** A source or target that changed, has the wrong type or size, or is otherwise unusable (exit 4). */
export function ioError(code: string, message: string, context: ErrorContext = {}): FixedramError {
  return new FixedramError(code, ExitCode.system, message, context);
}

/** Re-throws an ERR_INTERRUPTED error with a message saying what the interruption left behind. */
export function explainInterrupt(err: unknown, what: string): unknown {
  if (err instanceof FixedramError && err.code === 'ERR_INTERRUPTED') return interruptedError(`interrupted: ${what}`);
  return err;
}

export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
  block?: string;
  offset?: number;
}

/**
 * Builds an error identical in shape to Node's fs errors from a positive C errno:
 * message `CODE: description, syscall 'path'`, `errno` negative, plus fixedram context.
 */
export function sysError(errnoPositive: number, syscall: string, context: ErrorContext = {}): SystemError {
  const errno = -Math.abs(errnoPositive);
  const [code, description] = util.getSystemErrorMap().get(errno) ?? [`E${Math.abs(errno)}`, 'unknown error'];
  let message = `${code}: ${description}, ${syscall}`;
  if (context.path !== undefined) message += ` '${context.path}'`;
  const err = new Error(message) as SystemError;
  err.errno = errno;
  err.code = code;
  err.syscall = syscall;
  Object.assign(err, definedOnly(context));
  return err;
}

/** True for errors shaped like Node's system errors. */
export function isSystemError(err: unknown): err is SystemError {
  return (
    err instanceof Error &&
    typeof (err as SystemError).code === 'string' &&
    typeof (err as SystemError).errno === 'number' &&
    typeof (err as SystemError).syscall === 'string'
  );
}

/** The exit status an error maps to. */
export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof FixedramError) return err.exitCode;
  return ExitCode.system;
}

/** A plain, structured-clone-safe description of an error, for crossing threads. */
export interface ErrorRecord {
  name: string;
  message: string;
  stack?: string;
  code?: string;
  exitCode?: number;
  errno?: number;
  syscall?: string;
  path?: string;
  block?: string;
  page?: number;
  offset?: number;
}

export function toRecord(err: unknown): ErrorRecord {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const e = err as Error & Partial<ErrorRecord>;
  return definedOnly({
    name: e.name,
    message: e.message,
    stack: e.stack,
    code: typeof e.code === 'string' ? e.code : undefined,
    exitCode: err instanceof FixedramError ? err.exitCode : undefined,
    errno: typeof e.errno === 'number' ? e.errno : undefined,
    syscall: typeof e.syscall === 'string' ? e.syscall : undefined,
    path: typeof e.path === 'string' ? e.path : undefined,
    block: typeof e.block === 'string' ? e.block : undefined,
    page: typeof e.page === 'number' ? e.page : undefined,
    offset: typeof e.offset === 'number' ? e.offset : undefined,
  }) as ErrorRecord;
}

export function fromRecord(r: ErrorRecord): Error {
  let err: Error;
  const context = definedOnly({ block: r.block, page: r.page, offset: r.offset, path: r.path });
  if (r.exitCode !== undefined && r.code !== undefined) {
    err = new FixedramError(r.code, r.exitCode as ExitCode, r.message, context);
  } else {
    err = new Error(r.message);
    Object.assign(err, definedOnly({ code: r.code, errno: r.errno, syscall: r.syscall }), context);
  }
  err.name = r.name;
  if (r.stack !== undefined) err.stack = r.stack;
  return err;
}

/** Where an error happened, for one-line messages: "block 'x' page 3 (offset 0x...)". */
export function describeLocation(err: ErrorContext): string {
  const parts: string[] = [];
  if (err.block !== undefined) parts.push(`block '${err.block}'`);
  if (err.page !== undefined) parts.push(`page ${err.page}`);
  if (err.offset !== undefined) parts.push(`offset 0x${err.offset.toString(16)}`);
  return parts.join(' ');
}

function definedOnly<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

/**
 * Gives a system error that lacks one the path of the file it concerns, in its message too (as Node
 * words it: `CODE: description, syscall 'path'`), so every read or write error names its file.
 */
export function withPath<T>(err: T, file: string): T {
  if (isSystemError(err) && err.path === undefined) {
    err.path = file;
    if (!err.message.includes(`'${file}'`)) err.message += ` '${file}'`;
  }
  return err;
}
