/**
 * A QMP (QEMU Machine Protocol) client over a unix socket: greeting + `qmp_capabilities`, commands
 * with ids, events, timeouts, and disconnect detection.
 *
 * Hand-written: the one npm package for QMP (`qemu-qmp`) is an unmaintained callback API without
 * types, ids, timeouts or disconnect handling, and the protocol is small (one JSON object per line).
 *
 * Every failure is a {@link FixedramError} with exit status 4 and a one-line message that quotes
 * QEMU's own `desc` (escaped: nothing QEMU sends reaches a terminal raw).
 */
import * as net from 'node:net';
import { ExitCode, FixedramError } from './errors';

/** An error from QMP: a command QEMU refused, a timeout, a lost connection (exit 4). */
export class QmpError extends FixedramError {
  /** QEMU's error class (`GenericError`, `CommandNotFound`, …) when QEMU answered with an error. */
  readonly qmpClass: string | undefined;
  /** QEMU's error description, unescaped (as QEMU sent it). */
  readonly desc: string | undefined;

  constructor(code: string, message: string, opts: { qmpClass?: string; desc?: string; path?: string } = {}) {
    super(code, ExitCode.system, message, opts.path !== undefined ? { path: opts.path } : {});
    this.name = 'QmpError';
    this.qmpClass = opts.qmpClass;
    this.desc = opts.desc;
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpOptions {
  /** Milliseconds to wait for the connection and the greeting (default 10 000). */
  connectTimeoutMs?: number;
  /** Default milliseconds to wait for a command's reply (default 60 000). */
  commandTimeoutMs?: number;
}

/** Longest line accepted from QEMU (a reply to `qom-list` on a large machine is a few hundred KB). */
const kMaxLine = 32 << 20;

/** Escapes control characters and non-ASCII line separators so QEMU's text is one safe line. */
export function escapeText(s: string): string {
  /* eslint-disable no-control-regex -- control characters are what we escape (a block: stays put when formatted) */
  return s.replace(
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
  /* eslint-enable no-control-regex */
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private closeReason: QmpError | undefined;
  /** QEMU's version from the greeting, e.g. "10.0.2". */
  version = '';
  private greeted: ((v: unknown) => void) | undefined;

  private constructor(
    private readonly sock: net.Socket,
    readonly path: string,
    private readonly opts: Required<QmpOptions>,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (err: NodeJS.ErrnoException) =>
      this.shutdown(
        new QmpError(
          'ERR_QMP_DISCONNECTED',
          err.code === 'ECONNRESET' || err.code === 'EPIPE'
            ? `QEMU closed the QMP connection '${escapeText(path)}' (did QEMU exit?)`
            : `QMP connection to '${escapeText(path)}' failed: ${escapeText(err.message)}`,
          { path },
        ),
      ),
    );
    sock.on('close', () =>
      this.shutdown(
        new QmpError('ERR_QMP_DISCONNECTED', `QEMU closed the QMP connection '${escapeText(path)}' (did QEMU exit?)`, {
          path,
        }),
      ),
    );
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string, options: QmpOptions = {}): Promise<QmpClient> {
    const opts: Required<QmpOptions> = { connectTimeoutMs: 10_000, commandTimeoutMs: 60_000, ...options };
    const where = escapeText(socketPath);
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(
          new QmpError(
            'ERR_QMP_TIMEOUT',
            `cannot connect to the QMP socket '${where}' within ${opts.connectTimeoutMs / 1000} s`,
            { path: socketPath },
          ),
        );
      }, opts.connectTimeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          new QmpError(
            'ERR_QMP_CONNECT',
            `cannot connect to the QMP socket '${where}': ${err.code ?? err.message}` +
              `${err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? ' (is QEMU running with -qmp unix:PATH,server=on,wait=off?)' : ''}`,
            { path: socketPath },
          ),
        );
      });
    });
    const client = new QmpClient(sock, socketPath, opts);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        sock.destroy();
        reject(
          new QmpError(
            'ERR_QMP_TIMEOUT',
            `no QMP greeting on '${where}' within ${opts.connectTimeoutMs / 1000} s ` +
              '(a QMP socket serves one client at a time: give fixedram its own -qmp socket)',
            { path: socketPath },
          ),
        );
      }, opts.connectTimeoutMs);
      client.greeted = () => {
        clearTimeout(timer);
        resolve();
      };
      sock.once('close', () => {
        clearTimeout(timer);
        reject(
          client.closeReason ??
            new QmpError('ERR_QMP_DISCONNECTED', `QEMU closed '${where}' before its greeting`, { path: socketPath }),
        );
      });
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onLine(line);
    }
    if (this.buf.length > kMaxLine) {
      this.sock.destroy();
      this.shutdown(
        new QmpError('ERR_QMP_PROTOCOL', `QMP line from '${escapeText(this.path)}' longer than ${kMaxLine} bytes`, {
          path: this.path,
        }),
      );
    }
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new Error('not an object');
    } catch {
      this.sock.destroy();
      this.shutdown(
        new QmpError(
          'ERR_QMP_PROTOCOL',
          `QEMU sent a line that is not a JSON object on '${escapeText(this.path)}': ` +
            `${escapeText(line.slice(0, 80))}`,
          { path: this.path },
        ),
      );
      return;
    }
    if (msg.QMP !== undefined) {
      const v = (msg.QMP as { version?: { qemu?: { major?: number; minor?: number; micro?: number } } }).version?.qemu;
      if (v) this.version = `${v.major}.${v.minor}.${v.micro}`;
      this.greeted?.(undefined);
      this.greeted = undefined;
      return;
    }
    if (typeof msg.event === 'string') {
      const e = msg as unknown as QmpEvent;
      for (const l of [...this.listeners]) l(e);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id !== undefined ? this.pending.get(id) : undefined;
    if (!p || id === undefined) return; // a reply to nobody (e.g. after a timeout): ignore
    this.pending.delete(id);
    clearTimeout(p.timer);
    const err = msg.error as { class?: unknown; desc?: unknown } | undefined;
    if (err !== undefined) {
      const desc = typeof err.desc === 'string' ? err.desc : JSON.stringify(err);
      p.reject(
        new QmpError('ERR_QMP_COMMAND', `QEMU refused ${p.command}: ${escapeText(desc)}`, {
          qmpClass: typeof err.class === 'string' ? err.class : 'GenericError',
          desc,
          path: this.path,
        }),
      );
    } else {
      p.resolve(msg.return);
    }
  }

  private shutdown(reason: QmpError): void {
    if (this.closeReason) return;
    this.closeReason = reason;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new QmpError(reason.code, `${reason.message} during ${p.command}`, { path: this.path }));
    }
    for (const l of [...this.listeners]) l({ event: '__closed' });
  }

  /** True once the connection is gone. */
  get closed(): boolean {
    return this.closeReason !== undefined;
  }

  /** Runs a command; resolves with its `return` value, rejects with a QmpError. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = this.opts.commandTimeoutMs,
  ): Promise<T> {
    if (this.closeReason)
      return Promise.reject(
        new QmpError(this.closeReason.code, `${this.closeReason.message} (before ${command})`, { path: this.path }),
      );
    const id = `fixedram-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new QmpError('ERR_QMP_TIMEOUT', `QEMU did not answer ${command} within ${timeoutMs / 1000} s`, {
            path: this.path,
          }),
        );
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /** Calls fn for every event until the returned function is called. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Waits for an event named `name` (and matching `accept`). Rejects on timeout or disconnect.
   * Subscribe before the command that causes the event, so it cannot be missed.
   */
  waitEvent(
    name: string,
    timeoutMs: number,
    accept: (e: QmpEvent) => boolean = () => true,
  ): { promise: Promise<QmpEvent>; cancel: () => void } {
    let off = (): void => undefined;
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      if (this.closeReason) {
        reject(
          new QmpError(this.closeReason.code, `${this.closeReason.message} while waiting for ${name}`, {
            path: this.path,
          }),
        );
        return;
      }
      timer = setTimeout(() => {
        off();
        reject(
          new QmpError('ERR_QMP_TIMEOUT', `no ${name} event from QEMU within ${timeoutMs / 1000} s`, {
            path: this.path,
          }),
        );
      }, timeoutMs);
      off = this.onEvent((e) => {
        if (e.event === '__closed') {
          off();
          clearTimeout(timer);
          reject(
            new QmpError(this.closeReason!.code, `${this.closeReason!.message} while waiting for ${name}`, {
              path: this.path,
            }),
          );
        } else if (e.event === name && accept(e)) {
          off();
          clearTimeout(timer);
          resolve(e);
        }
      });
    });
    promise.catch(() => undefined); // the caller may cancel without awaiting
    return {
      promise,
      cancel: () => {
        off();
        clearTimeout(timer);
      },
    };
  }

  /** Closes the connection (QEMU keeps running). */
  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
