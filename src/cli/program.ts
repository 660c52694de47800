/**
 * The command line: builds the commander program from the command table (commands/index.ts), maps
 * flags onto the typed core through each command module, and results onto stdout, stderr and the
 * exit status. stdout carries the result (a human summary, or exactly one JSON object with --json);
 * logs, progress, warnings and errors go to stderr.
 */
import { Command, CommanderError } from 'commander';
import { escapingWriter } from '../escape';
import { guardStderr } from '../streams';
import { removeTempsSync } from '../cleanup';
import { ExitCode, FixedramError, isSystemError } from '../errors';
import { makeCliLogger } from '../log';
import { progressReporter } from '../progress';
import type { ChannelTeam } from '../channels/pool';
import type { CliCommand, CoreContext } from './command';
import { commandFor } from './commands/table';
import { addGlobalOptions, type GlobalFlags } from './options';
import { cliExitCodeOf, errorEnvelope, errorLine, guardStdout, resultEnvelope, StderrLines } from './output';

/** The version of the package (--version); the snapshot format has its own, kFormatVersion in format.ts. */
const kPackageVersion: string = (require('../../../package.json') as { version: string }).version;

export const kExitHelp = `
Exit status:
  0    ok
  1    integrity failure: a page checksum mismatch, or a difference against a live file
  2    usage error: bad command line, option value, block name or target
  3    snapshot invalid, truncated, incomplete or unsupported
  4    I/O or system error (the message names the errno code, syscall and path)
  130  interrupted (SIGINT/SIGTERM)`;

export const kDescription =
  'Save and restore RAM block files into one fixed-offset snapshot (QEMU mapped-ram layout) ' +
  'with parallel channels and per-page XXH3 checksums.';

export interface ProgramIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WriteStream;
  /** Aborted on SIGINT/SIGTERM by main(); tests may pass their own. */
  signal?: AbortSignal;
  /** Receives the exit status of the command (main() sets process.exitCode from it). */
  setExitCode: (code: number) => void;
  /** stderr as lines (main() shares it with its signal handler); made from `stderr` when absent. */
  lines?: StderrLines;
  /**
   * When set, commands do not run: the mapped core options are handed here instead (tests check
   * the flag → option mapping in process with it).
   */
  capture?: (command: string, options: unknown) => void;
  /**
   * Channel threads started before the CLI was loaded (see early.ts), for the command to use; the
   * ones it leaves are stopped when it is done.
   */
  team?: ChannelTeam;
}

/** The commands of a program, with their full names ('vm save'), for help, completion and man page. */
export function commandsOf(program: Command): { name: string; cmd: Command }[] {
  const out: { name: string; cmd: Command }[] = [];
  const walk = (c: Command, prefix: string): void => {
    for (const sub of c.commands) {
      const name = prefix ? `${prefix} ${sub.name()}` : sub.name();
      if (sub.commands.length) walk(sub, name);
      else out.push({ name, cmd: sub });
    }
  };
  walk(program, '');
  return out;
}

/** Builds the program. Tests build as many as they like, with their own streams. */
export function makeProgram(
  io: ProgramIo,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a table of commands of different option types
  commands: readonly CliCommand<any, any, any>[] = (require('./commands') as typeof import('./commands')).kCommands,
): Command {
  const lines = (io.lines ??= new StderrLines(io.stderr));
  const program = new Command();
  program
    .name('fixedram')
    .description(kDescription)
    .version(kPackageVersion)
    .usage('<command> [options]')
    .addHelpText('after', kExitHelp)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // one line, like every other error: "fixedram: error: unknown option '--x' (see fixedram save --help)"
      outputError: (s, write) => write(`fixedram: ${s.trim().replace(/\n+/g, ' ')} (see ${helpHint} --help)\n`),
    });
  let helpHint = 'fixedram';
  program.hook('preSubcommand', (_cmd, sub) => {
    helpHint = `fixedram ${sub.name()}`;
  });

  for (const spec of commands) {
    const words = spec.name.split(' ');
    let parent = program;
    for (const w of words.slice(0, -1)) {
      parent = parent.commands.find((c) => c.name() === w) ?? parent.command(w).usage('<command> [options]');
    }
    const cmd = parent.command(words[words.length - 1]!).description(spec.description);
    spec.define(cmd);
    addGlobalOptions(cmd, spec.globals);
    cmd.addHelpText('after', kExitHelp);
    cmd.action(async (...a: unknown[]) => {
      const c = a[a.length - 1] as Command;
      await execute(
        spec,
        c.processedArgs.filter((x): x is string => typeof x === 'string'),
        c.opts<GlobalFlags>(),
      );
    });
  }

  (require('./completion') as typeof import('./completion')).addCompletionCommand(program, io);

  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any command of the table
  const execute = async (spec: CliCommand<any, any, any>, args: string[], flags: GlobalFlags): Promise<void> => {
    const quiet = flags.quiet === true;
    const reporter = spec.globals.channels
      ? progressReporter(quiet ? 'none' : (flags.progress ?? 'auto'), io.stderr)
      : undefined;
    lines.attach(reporter);
    const logger = makeCliLogger(quiet && flags.logLevel === 'warn' ? 'error' : flags.logLevel, flags.logFormat, (l) =>
      lines.line(l),
    );
    const ctx: CoreContext = {
      ...(io.signal ? { signal: io.signal } : {}),
      logger,
      ...(reporter ? { onProgress: reporter.sink } : {}),
      ...(io.team ? { team: io.team } : {}),
    };
    try {
      const options: unknown = spec.options(args, flags, ctx);
      if (io.capture) {
        io.capture(spec.name, options);
        return;
      }
      const r: unknown = await spec.run(options);
      reporter?.stop();
      const status = spec.status?.(r) ?? ExitCode.ok;
      if (flags.json) io.stdout.write(`${JSON.stringify(resultEnvelope(spec.name, status, spec.json(r)))}\n`);
      else if (!quiet) spec.print(r, escapingWriter(io.stdout)); // names never reach the terminal raw
      io.setExitCode(status);
    } catch (err) {
      reporter?.stop();
      const code = cliExitCodeOf(err);
      logger.debug({ err }, 'command failed');
      lines.line(`fixedram: ${code === ExitCode.interrupted ? '' : 'error: '}${errorLine(err)}`);
      if (flags.json) io.stdout.write(`${JSON.stringify(errorEnvelope(spec.name, err))}\n`);
      if (
        code === ExitCode.system &&
        !isSystemError(err) &&
        !(err instanceof FixedramError) &&
        (err as { code?: unknown }).code !== 'ERR_SHORT_READ'
      ) {
        io.stderr.write(`${(err as Error).stack ?? ''}\n`); // a bug: show where
      }
      io.setExitCode(code);
    } finally {
      lines.attach(undefined);
    }
  };
  return program;
}

/** The command named by argv (for usage errors before a command runs), or null. */
function commandNamed(program: Command, argv: readonly string[]): string | null {
  let c = program;
  const words: string[] = [];
  for (const a of argv) {
    const sub = c.commands.find((s) => s.name() === a || s.aliases().includes(a));
    if (!sub) break;
    words.push(sub.name());
    c = sub;
  }
  return words.length ? words.join(' ') : null;
}

/** Parses argv and runs; maps commander's own errors (bad flags, no command) to exit status 2. */
export async function runCli(argv: readonly string[], io: ProgramIo): Promise<void> {
  const lines = (io.lines ??= new StderrLines(io.stderr));
  const stdoutState = guardStdout(io.stdout, lines, io.setExitCode);
  const setExitCode = (c: number): void => io.setExitCode(stdoutState.failed ? ExitCode.system : c);
  // a run that names a command builds the program of that command alone (only its module is
  // loaded); anything else (no command, a typo, help, completion) gets every command
  let program: Command | undefined;
  try {
    const only = commandFor(argv);
    program = only ? makeProgram({ ...io, setExitCode }, [only]) : makeProgram({ ...io, setExitCode });
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit 0; help shown because no command was given is a usage error
      if (err.exitCode === 0) {
        setExitCode(ExitCode.ok);
        return;
      }
      if (argv.includes('--json')) {
        io.stdout.write(`${JSON.stringify(errorEnvelope(program ? commandNamed(program, argv) : null, err))}\n`);
      }
      setExitCode(ExitCode.usage);
      return;
    }
    throw err;
  } finally {
    io.team?.dispose(); // the channels the command did not take
  }
}

/** Entry point of bin/fixedram.js: signals, stdout failures, exit status. */
export async function main(argv = process.argv.slice(2), team?: ChannelTeam): Promise<void> {
  const controller = new AbortController();
  guardStderr(process.stderr); // a closed stderr never kills the work (src/streams.ts)
  const lines = new StderrLines(process.stderr);
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupts++;
    lines.clearProgress();
    if (interrupts > 1) {
      // Exit at once, even while channels are inside a native call: remove the temp files, then
      // die by the signal itself (default action), which shells report as 128 + 2 = 130.
      removeTempsSync();
      lines.line(`fixedram: ${sig} again, exiting at once`);
      process.removeAllListeners(sig);
      process.kill(process.pid, sig);
      return;
    }
    lines.line(`fixedram: ${sig}: stopping (again to exit at once)`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  await runCli(argv, {
    stdout: process.stdout,
    stderr: process.stderr,
    lines,
    signal: controller.signal,
    ...(team ? { team } : {}),
    setExitCode: (c) => {
      process.exitCode = c;
    },
  });
}
