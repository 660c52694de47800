/**
 * One CLI command = one module exporting a {@link CliCommand}: its flags, the mapping of those flags
 * onto the typed core options, the call into the core, and how its result is printed. Adding a
 * command is one file in `commands/` and one line in `commands/table.ts`.
 */
import type { Command } from 'commander';
import type { Logger } from 'pino';
import type { ExitCode } from '../errors';
import type { ProgressSink } from '../progress';
import type { GlobalFlags, GlobalOptionSet } from './options';
import type { ChannelTeam } from '../channels/pool';

/** What every core call gets from the CLI run (absent ones are left out of the options). */
export interface CoreContext {
  signal?: AbortSignal;
  logger?: Logger;
  onProgress?: ProgressSink;
  /** Channel threads started before the CLI was loaded (early.ts); only `save --update` takes them. */
  team?: ChannelTeam;
}

/** Spreads the context into core options (leaving out what is undefined; not the team). */
export function withContext(ctx: CoreContext): CoreContext {
  return {
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(ctx.logger ? { logger: ctx.logger } : {}),
    ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
  };
}

/**
 * The flags among `keys` that were given, under the same names (commander leaves a flag that was
 * not given undefined; the core options leave it out).
 */
export function given<T extends object, K extends keyof T>(
  flags: T,
  ...keys: K[]
): { [P in K]?: Exclude<T[P], undefined> } {
  const out: { [P in K]?: Exclude<T[P], undefined> } = {};
  for (const k of keys) if (flags[k] !== undefined) out[k] = flags[k] as Exclude<T[K], undefined>;
  return out;
}

export interface CliCommand<Flags = Record<string, unknown>, Options = unknown, Result = unknown> {
  /** As typed: 'save', or 'vm save' for a subcommand of 'vm'. */
  name: string;
  description: string;
  /** Which optional global options it takes (-j/--progress, --follow-symlinks). */
  globals: GlobalOptionSet;
  /** Adds the arguments and the command's own options. */
  define(cmd: Command): void;
  /** Maps positional arguments and flags onto the core's options. Pure: no I/O. */
  options(args: string[], flags: Flags & GlobalFlags, ctx: CoreContext): Options;
  /** Calls the core (modules are imported lazily to keep start-up fast). */
  run(options: Options): Promise<Result>;
  /** The fields of the JSON result after the envelope (docs/json.md). */
  json(result: Result): object;
  /** The human summary on stdout. */
  print(result: Result, out: NodeJS.WritableStream): void;
  /** Exit status of a result (default 0). */
  status?(result: Result): ExitCode;
}

/** Identity function that checks a command module's types. */
export function defineCommand<F, O, R>(c: CliCommand<F, O, R>): CliCommand<F, O, R> {
  return c;
}
