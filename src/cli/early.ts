/**
 * Channel threads the bin starts before the CLI itself is loaded, for `save --update`. Its main
 * thread is ready for pages about 50 ms after the CLI starts; a worker thread started then would
 * take 30-90 ms more (a new isolate, the modules, the addon), and until one is, the main thread
 * hashes alone. Started here, they load while commander and the commands do.
 *
 * Why argv is read by hand: commander is not loaded yet (that is the point), so this only guesses,
 * and guesses low: the flags in the parser's own forms only, as many threads as the blocks' sizes
 * give batches (default batch size), none when a value looks wrong or a block file cannot be
 * stat'ed (the CLI reports that), none for blocks too large for one table window (their walk has
 * its own pool). A wrong guess costs thread starts, never a wrong result: update() takes the
 * channels it needs from these (ProgramIo.team → UpdateOptions.team) and stops the rest, and the
 * CLI stops any left once the command is done.
 */
import * as fs from 'node:fs';
import { availableParallelism } from 'node:os';
import type { ChannelTeam } from '../channels/pool';

// the limits of ../options and ../plan, repeated so that a run of any other command loads nothing here
const kMaxChannels = 64;
const kBatchBytes = 4 << 20;
const kWindowBytes = 2 ** 21 * 4096;

/** The worker threads `save --update` will want (channels - 1: the main thread is one), or undefined. */
export function earlyChannels(argv: readonly string[]): ChannelTeam | undefined {
  const workers = earlyWorkers(argv);
  if (workers < 1) return undefined;
  // loaded only now: any other command does not load the pool (nor node:worker_threads)
  return (require('../channels/pool') as typeof import('../channels/pool')).prestartChannels(workers);
}

/** How many worker threads the command line will want, as far as it can be told without the parser; 0 when unsure. */
export function earlyWorkers(argv: readonly string[]): number {
  if (argv[0] !== 'save' || !argv.includes('--update')) return 0;
  let channels = Math.min(kMaxChannels, Math.max(1, availableParallelism()));
  const paths: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '-h' || a === '--help') return 0;
    const value = (short: string, long: string): string | undefined => {
      if (a === short || a === long) return argv[++i] ?? '';
      if (a.startsWith(`${long}=`)) return a.slice(long.length + 1);
      if (a.startsWith(short) && a.length > short.length) return a.slice(short.length);
      return undefined;
    };
    const out = value('-o', '--output');
    // an object-storage output goes through the s3 code, which has channels of its own
    if (out !== undefined && out.startsWith('s3://')) return 0;
    const block = value('-b', '--block');
    if (block !== undefined) {
      const eq = block.indexOf('=');
      if (eq <= 0) return 0;
      paths.push(block.slice(eq + 1));
    }
    const j = value('-j', '--channels');
    if (j !== undefined) {
      // the parser's rule (a plain decimal integer; 0 = one per CPU); anything else is its to report
      if (!/^\d+$/.test(j) || Number(j) > kMaxChannels) return 0;
      channels = Number(j) === 0 ? Math.min(kMaxChannels, Math.max(1, availableParallelism())) : Number(j);
    }
  }
  let batches = 0;
  let bytes = 0;
  for (const p of paths) {
    let size: number;
    try {
      size = fs.statSync(p).size;
    } catch {
      return 0;
    }
    bytes += size;
    batches += Math.ceil(size / kBatchBytes);
  }
  if (bytes > kWindowBytes) return 0;
  return Math.max(0, Math.min(channels, batches) - 1);
}
