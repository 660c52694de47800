/**
 * Progress events of long operations (the core emits them), and the ways the CLI shows them on
 * stderr: a one-line bar on a terminal, plain lines elsewhere, NDJSON events, or nothing.
 *
 * The bar is written here rather than with a progress-bar package because it must fit the terminal
 * width exactly, be erased before any other stderr line and on SIGINT, and never print NaN or
 * infinite rates/ETAs; the package we used before redrew from its own timer and printed `NF`.
 */

export interface ProgressEvent {
  /** The command reporting, e.g. 'save', 'load', 'verify', 'convert'. */
  command: string;
  bytesDone: number;
  bytesTotal: number;
}

export type ProgressSink = (e: ProgressEvent) => void;

export type ProgressMode = 'auto' | 'bar' | 'json' | 'none';

export interface ProgressReporter {
  sink: ProgressSink;
  /** Erases the bar (if drawn) so that a message can be written; the next event redraws it. */
  clear(): void;
  /** Writes what is pending and erases the bar. */
  stop(): void;
}

/** What a reporter writes to: stderr (a terminal or not) and its width. */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

const kMiB = 2 ** 20;

/** 0:07, 12:34, 1:02:03. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** 512 B, 3.4 MiB, 1.20 GiB. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '--';
  if (n < 1024) return `${n} B`;
  if (n < kMiB) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 2 ** 30) return `${(n / kMiB).toFixed(1)} MiB`;
  return `${(n / 2 ** 30).toFixed(2)} GiB`;
}

/** The numbers of one progress line; every field is finite or shown as `--`. */
function figures(e: ProgressEvent, elapsedMs: number) {
  const total = Math.max(0, e.bytesTotal);
  const done = Math.min(Math.max(0, e.bytesDone), total);
  const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
  const secs = elapsedMs / 1000;
  const rate = secs >= 0.05 && done > 0 ? done / secs : undefined;
  const eta = rate !== undefined && total > done ? (total - done) / rate : undefined;
  return { done, total, pct, secs, rate, eta };
}

/**
 * One bar line of at most `width - 1` columns (the last column is left free so that the terminal
 * never wraps), e.g. `save  42% [=====>     ] 215.0/512.0 MiB  98.1 MiB/s  0:02 ETA 0:03`.
 * Parts are dropped from the right as the width shrinks; the bar takes what is left.
 */
export function renderBar(e: ProgressEvent, elapsedMs: number, width: number): string {
  const f = figures(e, elapsedMs);
  const max = Math.max(10, width - 1);
  const head = `${e.command} ${String(f.pct).padStart(3)}%`;
  const tail = [
    `${formatBytes(f.done)}/${formatBytes(f.total)}`,
    f.rate !== undefined ? `${formatBytes(f.rate)}/s` : '--/s',
    formatDuration(f.secs),
    `ETA ${f.eta !== undefined ? formatDuration(f.eta) : '--:--'}`,
  ];
  // keep as many tail parts as fit beside a bar of at least 10 columns
  while (tail.length > 0 && head.length + 1 + 12 + 2 + tail.join('  ').length > max) tail.pop();
  const rest = tail.length ? `  ${tail.join('  ')}` : '';
  const barWidth = max - head.length - 1 - rest.length - 2;
  if (barWidth < 3) return (head + rest).slice(0, max);
  const filled = Math.floor((barWidth * f.pct) / 100);
  const bar = filled >= barWidth ? '='.repeat(barWidth) : `${'='.repeat(filled)}>${' '.repeat(barWidth - filled - 1)}`;
  return `${head} [${bar}]${rest}`;
}

/** One plain progress line for a stderr that is not a terminal. */
export function renderPlain(e: ProgressEvent, elapsedMs: number): string {
  const f = figures(e, elapsedMs);
  return (
    `fixedram: ${e.command}: ${f.pct}% ${formatBytes(f.done)}/${formatBytes(f.total)}` +
    `${f.rate !== undefined ? `, ${formatBytes(f.rate)}/s` : ''}, ${formatDuration(f.secs)} elapsed`
  );
}

const kClear = '\r\x1b[K';

/**
 * A reporter on `stream`. `auto` is a bar on a terminal and nothing otherwise; `bar` on a
 * non-terminal falls back to plain lines (at most one a second, and the last one); `json` writes
 * one `{"event":"progress",…,"elapsedMs":…}` object per line at most every 100 ms and at the end.
 */
export function progressReporter(
  mode: ProgressMode,
  stream: ProgressStream = process.stderr,
  now: () => number = () => performance.now(),
): ProgressReporter {
  const effective =
    mode === 'auto' ? (stream.isTTY ? 'bar' : 'none') : mode === 'bar' && !stream.isTTY ? 'plain' : mode;
  const none: ProgressReporter = { sink: () => undefined, clear: () => undefined, stop: () => undefined };
  if (effective === 'none') return none;
  const t0 = now();
  const elapsed = (): number => Math.round(now() - t0);
  let last = -Infinity;
  let pending: ProgressEvent | undefined;
  const due = (e: ProgressEvent, every: number): boolean => {
    const t = now();
    if (t - last >= every || e.bytesDone >= e.bytesTotal) {
      last = t;
      return true;
    }
    pending = e;
    return false;
  };

  if (effective === 'json') {
    const write = (e: ProgressEvent): void => {
      pending = undefined;
      stream.write(
        `${JSON.stringify({
          event: 'progress',
          schemaVersion: 1,
          command: e.command,
          bytesDone: e.bytesDone,
          bytesTotal: e.bytesTotal,
          elapsedMs: elapsed(),
        })}\n`,
      );
    };
    return {
      sink: (e) => {
        if (due(e, 100)) write(e);
      },
      clear: () => undefined,
      stop: () => {
        if (pending) write(pending);
      },
    };
  }

  if (effective === 'plain') {
    let lastLine = '';
    const write = (e: ProgressEvent): void => {
      pending = undefined;
      const line = renderPlain(e, elapsed());
      if (line !== lastLine) stream.write(`${line}\n`);
      lastLine = line;
    };
    return {
      sink: (e) => {
        if (due(e, 1000)) write(e);
      },
      clear: () => undefined,
      stop: () => {
        if (pending) write(pending);
      },
    };
  }

  let drawn = false;
  const draw = (e: ProgressEvent): void => {
    pending = undefined;
    stream.write(`${kClear}${renderBar(e, elapsed(), stream.columns ?? 80)}`);
    drawn = true;
  };
  return {
    sink: (e) => {
      if (due(e, 100)) draw(e);
    },
    clear: () => {
      if (drawn) stream.write(kClear);
      drawn = false;
      // redraw at the next event even if it comes soon
      last = -Infinity;
    },
    stop: () => {
      if (drawn) stream.write(kClear);
      drawn = false;
      pending = undefined;
    },
  };
}
