/**
 * What the CLI writes: the JSON envelope of results and errors (docs/json.md), one-line error
 * messages, stderr lines that never collide with a progress bar, and the handling of a stdout that
 * fails (one line, exit 4; a closed pipe stays quiet).
 */
import { CommanderError } from 'commander';
import {
  describeLocation,
  ExitCode,
  exitCodeOf,
  FixedramError,
  isSystemError,
  toRecord,
  type ErrorRecord,
} from '../errors';
import { escapeControls } from '../escape';
import type { ProgressReporter } from '../progress';

/** The version of the JSON shape documented in docs/json.md. Bump it when a field changes meaning or goes away. */
export const kSchemaVersion = 1;

/** The fields every JSON result and error starts with. */
export interface Envelope {
  schemaVersion: number;
  /** The command as typed: 'save', 'load', 'vm save', …; null when no command was recognised. */
  command: string | null;
  ok: boolean;
  exitCode: number;
}

export type JsonError = Omit<ErrorRecord, 'stack' | 'name' | 'exitCode'> & { code: string; message: string };

/** A result object: the envelope, then the command's own fields. */
export function resultEnvelope(command: string, exitCode: number, fields: object): Envelope & Record<string, unknown> {
  const { command: _c, ok: _o, exitCode: _e, schemaVersion: _s, ...rest } = fields as Record<string, unknown>;
  return { schemaVersion: kSchemaVersion, command, ok: exitCode === ExitCode.ok, exitCode, ...rest };
}

/** An error object: the envelope and `error` (code, message and where: errno, syscall, path, block, page, offset). */
export function errorEnvelope(command: string | null, err: unknown): Envelope & { error: JsonError } {
  const { stack: _s, name: _n, exitCode: _e, ...rest } = toRecord(err);
  // commander's own codes (commander.unknownOption, …) are an implementation detail: all are ERR_USAGE
  const code = err instanceof CommanderError ? 'ERR_USAGE' : (rest.code ?? 'ERR_INTERNAL');
  return {
    schemaVersion: kSchemaVersion,
    command,
    ok: false,
    exitCode: cliExitCodeOf(err),
    error: { code, message: errorLine(err), ...withoutCodeMessage(rest) },
  };
}

/** The exit status of an error, including commander's own usage errors. */
export function cliExitCodeOf(err: unknown): number {
  if (err instanceof CommanderError) return ExitCode.usage;
  return exitCodeOf(err);
}

/**
 * The core speaks of its options (`option followSymlinks`), as a library should; on the command line
 * the same words name the flag (`--follow-symlinks`).
 */
export const kFlagOfOption: Readonly<Record<string, string>> = {
  channels: '--channels',
  followSymlinks: '--follow-symlinks',
  allowDevice: '--allow-device',
  pageSize: '--page-size',
  blocks: '-b',
  dir: '--dir',
  update: '--update',
  qmp: '--qmp',
};

function flagsForOptions(message: string): string {
  return message.replace(/\boption ([a-zA-Z]+)\b/g, (m, name: string) => kFlagOfOption[name] ?? m);
}

/** One line describing an error: what, where, errno code and syscall (options named as flags). */
export function errorLine(err: unknown): string {
  return flagsForOptions(errorLineOf(err));
}

function errorLineOf(err: unknown): string {
  if (err instanceof CommanderError) return err.message.replace(/^error: /, '');
  if (err instanceof FixedramError) {
    // name the file and offset unless the message already does
    const where = [
      err.path !== undefined && !err.message.includes(err.path) ? `'${err.path}'` : '',
      err.offset !== undefined && !/offset|0x/.test(err.message) ? `offset 0x${err.offset.toString(16)}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    return oneLine(where ? `${err.message} (${where})` : err.message);
  }
  if (isSystemError(err)) {
    const extra = describeLocation({
      ...(err.block !== undefined ? { block: err.block } : {}),
      ...(err.offset !== undefined ? { offset: err.offset } : {}),
    });
    return oneLine(extra ? `${err.message} (${extra})` : err.message);
  }
  if (err instanceof Error && (err as { code?: unknown }).code === 'ERR_SHORT_READ') {
    const e = err as Error & { block?: string };
    return oneLine(e.block !== undefined ? `${e.message} (block '${e.block}')` : e.message);
  }
  return oneLine(err instanceof Error ? err.message : String(err));
}

/** Errors are one line: newlines and other control characters (C0, DEL, C1) become visible escapes. */
function oneLine(s: string): string {
  return escapeControls(s);
}

/**
 * stderr as lines. A progress bar attached here is erased before every line (and redrawn by its
 * next event), so that warnings, errors and the SIGINT notice never share a line with it.
 */
export class StderrLines {
  private progress: ProgressReporter | undefined;

  constructor(readonly stream: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }) {}

  line(text: string): void {
    this.progress?.clear();
    // human lines are escaped (a name inside cannot reach the terminal raw); JSON log lines are exact
    this.stream.write(`${text.startsWith('{') ? text : escapeControls(text)}\n`);
  }

  warning(text: string): void {
    this.line(`fixedram: warning: ${text}`);
  }

  error(text: string): void {
    this.line(`fixedram: error: ${text}`);
  }

  attach(p: ProgressReporter | undefined): void {
    this.progress = p;
  }

  /** Erases the bar for good (SIGINT, end of the run). */
  clearProgress(): void {
    this.progress?.clear();
  }
}

/**
 * Watches stdout: a write that fails (ENOSPC on `> /dev/full`, EIO, …) is reported once as one
 * line and makes the exit status 4 (also when the command sets its own status afterwards: check
 * `failed`); EPIPE (the reader went away: `| head -c1`) is quiet and keeps the command's status.
 */
export function guardStdout(
  stdout: NodeJS.WritableStream,
  lines: StderrLines,
  setExitCode: (c: number) => void,
): { failed: boolean } {
  const state = { failed: false };
  let seen = false;
  stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (seen) return;
    seen = true;
    if (err.code === 'EPIPE') return;
    state.failed = true;
    lines.error(`cannot write to standard output: ${err.message}`);
    setExitCode(ExitCode.system);
  });
  return state;
}

function withoutCodeMessage<T extends { code?: unknown; message?: unknown }>(r: T): Omit<T, 'code' | 'message'> {
  const { code: _c, message: _m, ...rest } = r;
  return rest;
}
