/**
 * The command line: maps flags onto the typed core (save, load, verify, inspect) and results onto
 * stdout, stderr and the exit status. stdout carries the result (a human summary, or exactly one
 * JSON object with --json); logs, progress, warnings and errors go to stderr.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { Logger } from 'pino';
import { parseBlockArg, type BlockArg } from './blocks';
import { removeTempsSync } from './cleanup';
import {
  ExitCode, describeLocation, exitCodeOf, FixedramError, isSystemError, toRecord, type ErrorRecord,
} from './errors';
import type { ConvertResult } from './convert';
import type { InspectResult } from './inspect';
import type { LoadResult } from './load';
import { kLogLevels, makeLazyLogger, type LogLevel } from './log';
import { progressReporter, type ProgressMode } from './progress';
import type { SaveResult } from './save';
import type { UpdateResult } from './update';
import type { VerifyResult } from './verify';

const kVersion: string = (require('../../package.json') as { version: string }).version;

export const kExitHelp = `
Exit status:
  0    ok
  1    integrity failure: a page checksum mismatch, or a difference against a live file
  2    usage error: bad command line, option value, block name or target
  3    snapshot invalid, truncated, incomplete or unsupported
  4    I/O or system error (the message names the errno code, syscall and path)
  130  interrupted (SIGINT/SIGTERM)`;

export interface ProgramIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WriteStream;
  /** Aborted on SIGINT/SIGTERM by main(); tests may pass their own. */
  signal?: AbortSignal;
  /** Receives the exit status of the command (main() sets process.exitCode from it). */
  setExitCode: (code: number) => void;
}

interface CommonFlags {
  json?: boolean;
  progress?: ProgressMode;
  channels?: number;
  followSymlinks?: boolean;
}

function parseCount(what: string, min: number, max: number) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max} (got '${v}')`);
    const n = Number(v);
    if (n < min || n > max) throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max} (got ${v})`);
    return n;
  };
}

function parseSize(v: string): number {
  const m = /^(\d+)([kKmMgG]?)(i?[bB])?$/.exec(v);
  if (!m) throw new InvalidArgumentError(`expected a size in bytes such as 4096 or 2M (got '${v}')`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

function collectBlock(v: string, prev: BlockArg[] = []): BlockArg[] {
  try {
    return [...prev, parseBlockArg(v)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const rate = (bytes: number, s: number): string => (s > 0 ? `${mib(bytes / s)}/s` : '-');

/** One line describing an error: what, where, errno code and syscall. */
export function errorLine(err: unknown): string {
  if (err instanceof FixedramError) {
    // name the file and offset unless the message already does
    const where = [
      err.path !== undefined && !err.message.includes(err.path) ? `'${err.path}'` : '',
      err.offset !== undefined && !/offset|0x/.test(err.message) ? `offset 0x${err.offset.toString(16)}` : '',
    ].filter(Boolean).join(', ');
    return where ? `${err.message} (${where})` : err.message;
  }
  if (isSystemError(err)) {
    const extra = describeLocation({
      ...(err.block !== undefined ? { block: err.block } : {}),
      ...(err.offset !== undefined ? { offset: err.offset } : {}),
    });
    return extra ? `${err.message} (${extra})` : err.message;
  }
  if (err instanceof Error && (err as { code?: unknown }).code === 'ERR_SHORT_READ') {
    const e = err as Error & { block?: string };
    return e.block !== undefined ? `${e.message} (block '${e.block}')` : e.message;
  }
  return err instanceof Error ? err.message : String(err);
}

function jsonError(err: unknown): { ok: false; exitCode: number; error: Omit<ErrorRecord, 'stack' | 'name'> } {
  const { stack: _s, name: _n, ...rest } = toRecord(err);
  return { ok: false, exitCode: exitCodeOf(err), error: { ...rest, message: errorLine(err) } };
}

function printSave(r: SaveResult, out: NodeJS.WritableStream): void {
  const bytes = r.blocks.reduce((s, b) => s + b.length, 0);
  out.write(`saved ${r.blocks.length} block${r.blocks.length === 1 ? '' : 's'} (${mib(bytes)}) to ${r.output}\n`);
  for (const b of r.blocks) {
    out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
  }
  out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${r.channels} channel${r.channels === 1 ? '' : 's'}\n`);
}

function printConvert(r: ConvertResult, out: NodeJS.WritableStream): void {
  const bytes = r.blocks.reduce((s, b) => s + b.length, 0);
  out.write(`converted ${r.input} (QEMU mapped-ram, ${r.machineType}) to ${r.output}: ${r.blocks.length} block` +
    `${r.blocks.length === 1 ? '' : 's'} (${mib(bytes)})\n`);
  for (const b of r.blocks) {
    out.write(`  ${b.name}: ${b.pages} pages of ${b.pageSize} B, ${b.presentPages} present, ${b.zeroPages} zero\n`);
  }
  out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${r.channels} channel${r.channels === 1 ? '' : 's'}\n`);
}

function printUpdate(r: UpdateResult, out: NodeJS.WritableStream): void {
  out.write(`updated ${r.output} in place${r.repaired ? ' (repaired an interrupted update: every page rewritten)' : ''}\n`);
  out.write(`  ${r.pagesChecked} pages checked: ${r.pagesWritten} written, ${r.pagesPunched} punched (now zero), ` +
    `${r.pagesUnchanged} unchanged; ${r.presentPages} present\n`);
  out.write(`  ${mib(r.bytesWritten)} written in ${r.seconds.toFixed(2)} s, ${r.channels} channel${r.channels === 1 ? '' : 's'}\n`);
}

function printLoad(r: LoadResult, out: NodeJS.WritableStream): void {
  const bytes = r.blocks.reduce((s, b) => s + b.length, 0);
  out.write(`loaded ${r.blocks.length} block${r.blocks.length === 1 ? '' : 's'} (${mib(bytes)}) from ${r.snapshot}` +
    `${r.verified ? ', checksums verified' : ''}\n`);
  for (const b of r.blocks) {
    out.write(`  ${b.name} -> ${b.path}: ${b.presentPages} pages present, ${b.zeroPages} zero${b.created ? ' (created)' : ''}\n`);
  }
  out.write(`  ${mib(r.bytesRead)} read in ${r.seconds.toFixed(2)} s (${rate(bytes, r.seconds)}), ${r.channels} channel${r.channels === 1 ? '' : 's'}\n`);
}

function printVerify(r: VerifyResult, out: NodeJS.WritableStream): void {
  for (const f of r.failures) out.write(`FAIL ${f.message}\n`);
  if (r.failureCount > r.failures.length) out.write(`... and ${r.failureCount - r.failures.length} more\n`);
  const present = r.blocks.reduce((s, b) => s + b.presentPages, 0);
  const zero = r.blocks.reduce((s, b) => s + b.zeroPages, 0);
  const head = r.ok ? 'OK' : `FAILED: ${r.failureCount} failure${r.failureCount === 1 ? '' : 's'}`;
  out.write(`${head}: ${r.snapshot} (${r.format}), ${r.blocks.length} block${r.blocks.length === 1 ? '' : 's'}, ` +
    `${present} pages present, ${zero} zero, ${mib(r.bytesChecked)} checked in ${r.seconds.toFixed(2)} s ` +
    `(${rate(r.bytesChecked, r.seconds)})${r.checksums ? '' : ', no page checksums in this format'}` +
    `${r.compared.length ? `, compared with live: ${r.compared.join(', ')}` : ''}\n`);
}

function printInspect(r: InspectResult, out: NodeJS.WritableStream): void {
  out.write(`${r.path}: ${r.format}, ${r.fileSize} bytes, ${r.state}\n`);
  if (r.stateMessage) out.write(`  ${r.stateMessage}\n`);
  for (const [k, v] of Object.entries(r)) {
    if (['format', 'path', 'fileSize', 'state', 'stateMessage', 'blocks'].includes(k)) continue;
    out.write(`  ${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
  }
  const rows = r.blocks.map((b) => [b.name, String(b.length), String(b.pageSize), `0x${b.bitmapOffset.toString(16)}`,
    `0x${b.pagesOffset.toString(16)}`, String(b.presentPages), String(b.zeroPages)]);
  const head = ['name', 'length', 'page', 'bitmap', 'pages', 'present', 'zero'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  for (const row of [head, ...rows]) out.write(`  ${row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')}\n`);
}

/** Builds the program. Tests build as many as they like, with their own streams. */
export function makeProgram(io: ProgramIo): Command {
  let logger: Logger | undefined;
  const program = new Command();
  program
    .name('fixedram')
    .description('Save and restore RAM block files into one fixed-offset snapshot (QEMU mapped-ram layout) ' +
      'with parallel channels and per-page XXH3 checksums.')
    .version(kVersion)
    .addOption(new Option('--log-level <level>', 'log level on stderr').choices(kLogLevels).default('warn'))
    .addHelpText('after', kExitHelp)
    .showHelpAfterError('(add --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .hook('preAction', (cmd) => {
      logger = makeLazyLogger(cmd.opts<{ logLevel: LogLevel }>().logLevel, io.stderr === process.stderr ? 2 : io.stderr);
    });

  // Runs a command body: result → stdout, error → stderr (+ JSON on stdout), exit status.
  const run = async <T>(flags: CommonFlags, body: (onProgress: ReturnType<typeof progressReporter>) => Promise<T>,
    print: (r: T) => void, status: (r: T) => number = () => ExitCode.ok): Promise<void> => {
    const reporter = progressReporter(flags.progress ?? 'auto', io.stderr);
    try {
      const r = await body(reporter);
      reporter.stop();
      if (flags.json) io.stdout.write(`${JSON.stringify({ ok: status(r) === 0, ...r })}\n`);
      else print(r);
      io.setExitCode(status(r));
    } catch (err) {
      reporter.stop();
      const code = exitCodeOf(err);
      logger?.debug({ err }, 'command failed');
      io.stderr.write(`fixedram: ${code === ExitCode.interrupted ? '' : 'error: '}${errorLine(err)}\n`);
      if (flags.json) io.stdout.write(`${JSON.stringify(jsonError(err))}\n`);
      if (code === ExitCode.system && !isSystemError(err) && !(err instanceof FixedramError) &&
          (err as { code?: unknown }).code !== 'ERR_SHORT_READ') {
        io.stderr.write(`${(err as Error).stack ?? ''}\n`); // a bug: show where
      }
      io.setExitCode(code);
    }
  };
  const common = (cmd: Command, progress = true): Command => {
    cmd.option('--json', 'print one JSON result object on stdout (also for errors)')
      .option('--follow-symlinks', 'accept block files that are symbolic links');
    if (progress) {
      cmd.option('-j, --channels <n>', 'worker threads (default: number of CPUs)', parseCount('--channels', 1, 256))
        .addOption(new Option('--progress <mode>', 'progress on stderr').choices(['auto', 'bar', 'json', 'none']).default('auto'));
    }
    return cmd.addHelpText('after', kExitHelp);
  };

  common(program.command('save')
    .description('snapshot RAM block files into one file (written atomically)')
    .requiredOption('-o, --output <file>', 'snapshot file to write')
    .option('-b, --block <name=path>', 'a block: its name and file (repeat for more)', collectBlock)
    .option('--page-size <bytes>', 'page size (default 4096, the huge page size on hugetlbfs)', parseSize)
    .option('--no-fsync', 'do not fsync the snapshot and its directory')
    .option('--update', 'refresh an existing snapshot in place, writing only the pages that changed')
    .option('--direct-io', 'write page data with O_DIRECT (falls back to buffered I/O with a warning)')
    .option('--allow-device', 'accept block devices as block files'))
    .action(async (o: CommonFlags & {
      output: string; block?: BlockArg[]; pageSize?: number; fsync: boolean; update?: boolean; directIo?: boolean;
      allowDevice?: boolean;
    }) => {
      const common = {
        output: o.output, blocks: o.block ?? [], fsync: o.fsync, followSymlinks: o.followSymlinks ?? false,
        allowDevice: o.allowDevice ?? false,
        ...(o.channels !== undefined ? { channels: o.channels } : {}),
        ...(o.pageSize !== undefined ? { pageSize: o.pageSize } : {}),
        ...(io.signal ? { signal: io.signal } : {}), ...(logger ? { logger } : {}),
      };
      if (o.update) {
        await run(o, async (rep) => (await import('./update')).update({ ...common, onProgress: rep.sink }), (r) => printUpdate(r, io.stdout));
      } else {
        await run(o, async (rep) => (await import('./save')).save({ ...common, ...(o.directIo ? { directIo: true } : {}), onProgress: rep.sink }), (r) => printSave(r, io.stdout));
      }
    });

  common(program.command('load')
    .description('write the blocks of a snapshot (or QEMU mapped-ram file) into files')
    .argument('<file>', 'snapshot to load')
    .option('-b, --block <name=path>', 'load block NAME into PATH (repeat for more)', collectBlock)
    .option('--dir <dir>', 'load every block into DIR/<encoded name>')
    .option('--no-verify', 'do not check page checksums while loading')
    .option('--direct-io', 'read the snapshot with O_DIRECT (falls back to buffered I/O with a warning)')
    .option('--allow-device', 'accept block devices as targets'))
    .action(async (file: string, o: CommonFlags & {
      block?: BlockArg[]; dir?: string; verify: boolean; directIo?: boolean; allowDevice?: boolean;
    }) => {
      await run(o, async (rep) => (await import('./load')).load({
        snapshot: file, ...(o.block ? { blocks: o.block } : {}), ...(o.dir !== undefined ? { dir: o.dir } : {}),
        verify: o.verify, followSymlinks: o.followSymlinks ?? false, allowDevice: o.allowDevice ?? false,
        directIo: o.directIo ?? false,
        ...(o.channels !== undefined ? { channels: o.channels } : {}),
        ...(io.signal ? { signal: io.signal } : {}), onProgress: rep.sink, ...(logger ? { logger } : {}),
      }), (r) => printLoad(r, io.stdout));
    });

  common(program.command('verify')
    .description('check a snapshot: structure, every page checksum, optionally against live files')
    .argument('<file>', 'snapshot to verify')
    .option('--against <name=path>', 'compare block NAME with a live file byte for byte (repeat)', collectBlock)
    .option('--max-failures <n>', 'failures listed in detail (all are counted)', parseCount('--max-failures', 0, 1_000_000), 100))
    .action(async (file: string, o: CommonFlags & { against?: BlockArg[]; maxFailures: number }) => {
      await run(o, async (rep) => (await import('./verify')).verify({
        snapshot: file, against: o.against ?? [], maxReported: o.maxFailures, followSymlinks: o.followSymlinks ?? false,
        ...(o.channels !== undefined ? { channels: o.channels } : {}),
        ...(io.signal ? { signal: io.signal } : {}), onProgress: rep.sink, ...(logger ? { logger } : {}),
      }), (r) => printVerify(r, io.stdout), (r) => (r.ok ? ExitCode.ok : ExitCode.integrity));
    });

  common(program.command('convert')
    .description('write a fixedram snapshot (with checksums) of the RAM blocks of a QEMU mapped-ram file')
    .argument('<qemufile>', 'QEMU mapped-ram migration file (or libvirt sparse save image)')
    .requiredOption('-o, --output <file>', 'snapshot file to write')
    .option('--no-fsync', 'do not fsync the snapshot and its directory')
    .option('--direct-io', 'write page data with O_DIRECT (falls back to buffered I/O with a warning)'))
    .action(async (file: string, o: CommonFlags & { output: string; fsync: boolean; directIo?: boolean }) => {
      await run(o, async (rep) => (await import('./convert')).convert({
        input: file, output: o.output, fsync: o.fsync, directIo: o.directIo ?? false,
        ...(o.channels !== undefined ? { channels: o.channels } : {}),
        ...(io.signal ? { signal: io.signal } : {}), onProgress: rep.sink, ...(logger ? { logger } : {}),
      }), (r) => printConvert(r, io.stdout));
    });

  program.command('inspect')
    .description('show the blocks and layout of a snapshot or QEMU mapped-ram file')
    .argument('<file>', 'file to inspect')
    .option('--json', 'print one JSON object on stdout (also for errors)')
    .addHelpText('after', kExitHelp)
    .action(async (file: string, o: { json?: boolean }) => {
      await run({ ...o, progress: 'none' }, async () => (await import('./inspect')).inspect(file), (r) => printInspect(r, io.stdout));
    });

  return program;
}

/** Parses argv and runs; maps commander's own errors (bad flags) to exit status 2. */
export async function runCli(argv: readonly string[], io: ProgramIo): Promise<void> {
  const program = makeProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      const benign = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help';
      if (benign) {
        io.setExitCode(ExitCode.ok);
        return;
      }
      if (argv.includes('--json')) {
        io.stdout.write(`${JSON.stringify({ ok: false, exitCode: ExitCode.usage, error: { code: 'ERR_USAGE', message: err.message.replace(/^error: /, '') } })}\n`);
      }
      io.setExitCode(ExitCode.usage);
      return;
    }
    throw err;
  }
}

/** Entry point of bin/fixedram.js: signals, EPIPE, exit status. */
export async function main(argv = process.argv.slice(2)): Promise<void> {
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupts++;
    if (interrupts > 1) {
      // Exit at once, even while channels are inside a native call: remove the temp files, then
      // die by the signal itself (default action), which shells report as 128 + 2 = 130.
      removeTempsSync();
      process.stderr.write(`fixedram: ${sig} again, exiting at once\n`);
      process.removeAllListeners(sig);
      process.kill(process.pid, sig);
      return;
    }
    process.stderr.write(`fixedram: ${sig}: stopping (again to exit at once)\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // A closed stdout (`fixedram inspect --json | head -c1`) ends the run quietly with its own status.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
  await runCli(argv, {
    stdout: process.stdout,
    stderr: process.stderr,
    signal: controller.signal,
    setExitCode: (c) => {
      process.exitCode = c;
    },
  });
}
