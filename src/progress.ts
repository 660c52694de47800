/** Progress events of long operations, and the ways the CLI shows them. */

export interface ProgressEvent {
  command: 'save' | 'load' | 'verify' | 'convert';
  bytesDone: number;
  bytesTotal: number;
}

export type ProgressSink = (e: ProgressEvent) => void;

export type ProgressMode = 'auto' | 'bar' | 'json' | 'none';

export interface ProgressReporter {
  sink: ProgressSink;
  stop(): void;
}

/**
 * A reporter writing to stderr: a bar (TTY), NDJSON events (one `{"event":"progress",...}` object
 * per line, at most every 100 ms and always at the end), or nothing.
 */
export function progressReporter(mode: ProgressMode, stderr: NodeJS.WriteStream = process.stderr): ProgressReporter {
  const effective = mode === 'auto' ? (stderr.isTTY ? 'bar' : 'none') : mode;
  if (effective === 'none') return { sink: () => undefined, stop: () => undefined };
  if (effective === 'json') {
    let last = 0;
    let pending: ProgressEvent | undefined;
    const write = (e: ProgressEvent): void => {
      stderr.write(`${JSON.stringify({ event: 'progress', ...e })}\n`);
      pending = undefined;
    };
    return {
      sink: (e) => {
        const now = Date.now();
        if (now - last >= 100 || e.bytesDone === e.bytesTotal) {
          last = now;
          write(e);
        } else pending = e;
      },
      stop: () => {
        if (pending) write(pending);
      },
    };
  }
  const cliProgress = require('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar({
    stream: stderr,
    format: '{command} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {eta_formatted}',
    hideCursor: true,
    clearOnComplete: true,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  const mib = (v: number): string => (v / 2 ** 20).toFixed(0);
  return {
    sink: (e) => {
      if (!started) {
        bar.start(e.bytesTotal, 0, { command: e.command, doneMiB: '0', totalMiB: mib(e.bytesTotal) });
        started = true;
      }
      bar.update(e.bytesDone, { doneMiB: mib(e.bytesDone) });
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}
