/**
 * Driving QEMU's migration over QMP: capabilities (set, and put back as they were), an outgoing
 * migration to a file, an incoming one from a file, and waiting for either to finish.
 */
import { escapeText, QmpError, type QmpClient } from '../qmp';

export interface Capability {
  capability: string;
  state: boolean;
}

export interface MigrationInfo {
  status: string;
  'error-desc'?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The capabilities fixedram sets; every other one is left alone. */
const kOurs = ['x-ignore-shared', 'mapped-ram', 'multifd'] as const;

/**
 * Sets the given capabilities (the others of {@link kOurs} off) and returns a function that puts
 * back the values QEMU had before (best effort: QEMU may be gone by then).
 */
export async function setCapabilities(
  q: QmpClient,
  on: readonly (typeof kOurs)[number][],
): Promise<() => Promise<void>> {
  const before = await q.execute<Capability[]>('query-migrate-capabilities');
  const was = new Map(before.map((c) => [c.capability, c.state]));
  const want = kOurs.filter((c) => was.has(c) || on.includes(c)).map((c) => ({ capability: c, state: on.includes(c) }));
  await q.execute('migrate-set-capabilities', { capabilities: want });
  return async () => {
    const back = want
      .filter((c) => was.get(c.capability) !== c.state)
      .map((c) => ({ capability: c.capability, state: was.get(c.capability) ?? false }));
    if (back.length && !q.closed)
      await q.execute('migrate-set-capabilities', { capabilities: back }).catch(() => undefined);
  };
}

/**
 * Polls query-migrate until the migration completes (every 1, 2, 4, … ms, at most `maxDelayMs`:
 * a short bound while the VM is stopped); throws with QEMU's error-desc when it fails.
 */
export async function waitMigration(
  q: QmpClient,
  what: string,
  timeoutMs: number,
  signal?: AbortSignal,
  maxDelayMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    const st = await q.execute<MigrationInfo>('query-migrate');
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') {
      throw new QmpError(
        'ERR_QMP_MIGRATION',
        `QEMU's ${what} ${st.status}: ${escapeText(st['error-desc'] ?? 'no reason given')}`,
        {
          ...(st['error-desc'] !== undefined ? { desc: st['error-desc'] } : {}),
          path: q.path,
        },
      );
    }
    if (signal?.aborted) {
      await q.execute('migrate_cancel').catch(() => undefined);
      throw signal.reason instanceof Error ? signal.reason : new Error('interrupted');
    }
    if (Date.now() > deadline) {
      await q.execute('migrate_cancel').catch(() => undefined);
      throw new QmpError(
        'ERR_QMP_TIMEOUT',
        `QEMU's ${what} did not finish within ${timeoutMs / 1000} s (status '${escapeText(st.status)}'); cancelled`,
        { path: q.path },
      );
    }
    await sleep(delay);
    delay = Math.min(delay * 2, maxDelayMs);
  }
}

/**
 * Refuses a QEMU that is not waiting for an incoming migration (`-incoming defer`); `hint` says how
 * to start one that is.
 */
export async function expectIncoming(q: QmpClient, hint: string): Promise<void> {
  const st = await runState(q);
  if (st.status !== 'inmigrate') {
    throw new QmpError(
      'ERR_VM_STATE',
      `QEMU is not waiting for an incoming migration (status '${escapeText(st.status)}'): ${hint}`,
      { path: q.path },
    );
  }
}

/**
 * An incoming migration from `uri` with capabilities `caps` (put back as they were afterwards) and
 * migration `params`, waited for (bounded by timeoutMs); QEMU's own failure is turned into
 * `failed(QEMU's message)`.
 */
export async function migrateIncoming(
  q: QmpClient,
  o: {
    uri: string;
    caps: readonly (typeof kOurs)[number][];
    params?: Record<string, unknown>;
    what: string;
    timeoutMs: number;
    signal?: AbortSignal;
    failed: (message: string) => Error;
  },
): Promise<void> {
  const restoreCaps = await setCapabilities(q, o.caps);
  try {
    if (o.params) await q.execute('migrate-set-parameters', o.params);
    await q.execute('migrate-incoming', { uri: o.uri, 'exit-on-error': false });
    await waitMigration(q, o.what, o.timeoutMs, o.signal).catch((err: unknown) => {
      if (err instanceof QmpError && err.code === 'ERR_QMP_MIGRATION') throw o.failed(err.message);
      throw err;
    });
  } finally {
    await restoreCaps();
  }
}

/** The run state of the VM (`query-status`). */
export async function runState(q: QmpClient): Promise<{ status: string; running: boolean }> {
  return q.execute<{ status: string; running: boolean }>('query-status');
}
