/** Option parsers and the global options every command offers (see README "Use"). */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { parseBlockArg, type BlockArg } from '../block-args';
import { kLogFormats, kLogLevels } from '../log';
import { defaultChannels, kMaxChannels } from '../options';

/** An integer option value in [min, max]. */
export function parseCount(what: string, min: number, max: number) {
  return (v: string): number => {
    if (!/^\d+$/.test(v))
      throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max} (got '${v}')`);
    const n = Number(v);
    if (n < min || n > max)
      throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max} (got ${v})`);
    return n;
  };
}

/** `-j N`: 1..64 channels (threads moving pages; an update runs one on the main thread); 0 means one per CPU (as zstd and xz read `-T0`). */
export function parseChannels(v: string): number {
  const n = parseCount('--channels', 0, kMaxChannels)(v);
  return n === 0 ? defaultChannels() : n;
}

/** A size in bytes: 4096, 2M, 1GiB. */
export function parseSize(v: string): number {
  const m = /^(\d+)([kKmMgG]?)(i?[bB])?$/.exec(v);
  if (!m) throw new InvalidArgumentError(`expected a size in bytes such as 4096 or 2M (got '${v}')`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

/** Collects repeated NAME=PATH values. */
export function collectBlock(v: string, prev: BlockArg[] = []): BlockArg[] {
  try {
    return [...prev, parseBlockArg(v)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** `--no-fsync` (flag `fsync`, true unless given); `what` is what would be synced ('the snapshot'). */
export function noFsyncOption(what: string): Option {
  return new Option('--no-fsync', `do not fsync ${what} and its directory`);
}

/** `--direct-io`; `how` names the transfer ('read the snapshot', 'write page data'). */
export function directIoOption(how: string): Option {
  return new Option('--direct-io', `${how} with O_DIRECT (falls back to buffered I/O with a warning)`);
}

/** `--s3-endpoint <url>`; `use` says what the S3 URL is (' for -o s3://BUCKET/KEY'), `chain` the default. */
export function s3EndpointOption(use: string, chain = 'the AWS chain, AWS_ENDPOINT_URL'): Option {
  return new Option('--s3-endpoint <url>', `S3 endpoint${use} (default: ${chain})`);
}

/** Which of the optional global options a command takes. */
export interface GlobalOptionSet {
  /** `-j/--channels` and `--progress`: the command moves pages with worker threads. */
  channels?: boolean;
  /** `--follow-symlinks`: the command opens block files. */
  followSymlinks?: boolean;
}

/** The global flags as commander hands them to an action. */
export interface GlobalFlags {
  json?: boolean;
  quiet?: boolean;
  logLevel: (typeof kLogLevels)[number];
  logFormat: (typeof kLogFormats)[number];
  progress?: 'auto' | 'bar' | 'json' | 'none';
  channels?: number;
  followSymlinks?: boolean;
}

/**
 * Adds the global options to one command, so that each command's `--help` lists every option it
 * takes. `--json`, `-q`, `--log-level` and `--log-format` are on every command.
 */
export function addGlobalOptions(cmd: Command, set: GlobalOptionSet): Command {
  if (set.channels) {
    cmd
      .option(
        '-j, --channels <n>',
        'channels (threads moving pages), at most 64; 0 = one per CPU (default: one per CPU)',
        parseChannels,
      )
      .addOption(
        new Option('--progress <mode>', 'progress on stderr: a bar (on a terminal), NDJSON events, or none')
          .choices(['auto', 'bar', 'json', 'none'])
          .default('auto'),
      );
  }
  if (set.followSymlinks) cmd.option('--follow-symlinks', 'accept block files that are symbolic links');
  return cmd
    .option('--json', 'print one JSON object on stdout, also for errors (see docs/json.md)')
    .option('-q, --quiet', 'no summary on stdout, no progress, no warnings (errors are still printed)')
    .addOption(
      new Option('--log-level <level>', 'stderr log level; info, debug and trace log JSON lines')
        .choices(kLogLevels)
        .default('warn'),
    )
    .addOption(
      new Option('--log-format <format>', 'stderr log format (auto: JSON from --log-level info down)')
        .choices(kLogFormats)
        .default('auto'),
    );
}
