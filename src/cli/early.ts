/**
 * Channel threads the bin starts before the CLI itself is loaded, for `save --update`. Its main
 * thread is ready for pages about 50 ms after the CLI starts; a worker thread started then would
 * take 30-90 ms more (a new isolate, the modules, the addon), and until one is, the main thread
 * hashes alone. Started here, they load while commander and the commands do.
 *
 * Why argv is read by hand: commander is not loaded yet (that is the point), so this only guesses.
 * A wrong guess costs a thread start on another CPU, never a wrong result: update() takes the
 * channels it needs from these (ProgramIo.team → UpdateOptions.team) and stops the rest, and the
 * CLI stops any left once the command is done.
 */
import type { ChannelTeam } from '../channels/pool';
import { defaultChannels, kMaxChannels } from '../options';

/** The worker threads `save --update` will want (channels - 1: the main thread is one), or undefined. */
export function earlyChannels(argv: readonly string[]): ChannelTeam | undefined {
  const workers = earlyWorkers(argv);
  if (workers < 1) return undefined;
  // loaded only now: any other command does not load the pool (nor node:worker_threads)
  return (require('../channels/pool') as typeof import('../channels/pool')).prestartChannels(workers);
}

/** How many worker threads the command line asks for, as far as it can be told without the parser; 0 when none. */
export function earlyWorkers(argv: readonly string[]): number {
  if (argv[0] !== 'save' || !argv.includes('--update')) return 0;
  let channels = defaultChannels();
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '-h' || a === '--help') return 0;
    // an object-storage output goes through the s3 code, which has channels of its own
    if ((a === '-o' || a === '--output') && argv[i + 1]?.startsWith('s3://')) return 0;
    if (a.startsWith('--output=s3://')) return 0;
    const m = /^(?:-j|--channels)(?:=?(.*))$/.exec(a);
    if (!m) continue;
    const v = m[1] !== undefined && m[1] !== '' ? m[1] : argv[++i];
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > kMaxChannels) return 0; // the parser will say what is wrong
    channels = n;
  }
  return channels - 1;
}
