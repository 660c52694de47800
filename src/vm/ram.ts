/**
 * What RAM a running QEMU has, asked over QMP: its RAM blocks (`x-query-ramblock`, the text of HMP
 * `info ramblock`) and the memory backends behind them (`qom-list /objects`, `qom-get`). Decides
 * whether fixedram can move the RAM itself (every memory-backend block is a shared regular file).
 */
import * as fs from 'node:fs';
import { escapeText, QmpError, type QmpClient } from '../qmp';

export interface VmBackend {
  /** The object id (`-object memory-backend-file,id=ID`). */
  id: string;
  /** The idstr of its RAM block: the id, or `/objects/ID` with x-use-canonical-path-for-ramblock-id. */
  idstr: string;
  /** QOM type, e.g. `memory-backend-file`. */
  type: string;
  share: boolean;
  /** memory-backend-file only. */
  memPath?: string;
  /** memory-backend-file only: where the RAM starts in the file. */
  offset?: number;
  size: number;
}

export interface VmRamBlock {
  /** QEMU's RAM block idstr (the name in the migration stream and in the snapshot). */
  name: string;
  pageSize: number;
  /** used_length: the bytes QEMU migrates. */
  length: number;
  readonly: boolean;
  /** The memory backend this block belongs to, if any (guest RAM given with -object memory-backend-*). */
  backend?: VmBackend;
}

export interface VmRam {
  blocks: VmRamBlock[];
  /**
   * The blocks fixedram moves itself (memory-backend-file, share=on, a regular file of exactly the
   * block's size at offset 0), or undefined when some guest RAM is not such a file: then QEMU's
   * own mapped-ram migration moves the RAM. Blocks without a backend (ROMs, device RAM) always
   * travel in QEMU's device-state stream.
   */
  sharedFiles: (VmRamBlock & { backend: VmBackend & { memPath: string } })[] | undefined;
  /** Why sharedFiles is undefined (for logs and --json). */
  reason?: string;
}

const kUnits: Record<string, number> = { B: 1, KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 };

/**
 * Parses the text of `info ramblock`:
 * `  Block Name    PSize   Offset   Used   Total   HVA   RO` then one row per block. Names are
 * taken as everything before the page-size column (QEMU idstrs have no spaces, but a row is parsed
 * from its right end so one with spaces would still parse).
 */
export function parseRamblockText(
  text: string,
): { name: string; pageSize: number; length: number; readonly: boolean }[] {
  const rows: { name: string; pageSize: number; length: number; readonly: boolean }[] = [];
  for (const line of text.split(/\r?\n/)) {
    const m =
      /^\s*(.+?)\s+(\d+) (B|KiB|MiB|GiB)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+(?:\s+(rw|ro))?\s*$/i.exec(
        line,
      );
    if (!m) continue;
    rows.push({
      name: m[1]!,
      pageSize: Number(m[2]) * kUnits[m[3]!]!,
      length: parseInt(m[4]!, 16),
      readonly: m[5] === 'ro',
    });
  }
  return rows;
}

async function ramblockText(q: QmpClient): Promise<string> {
  try {
    const r = await q.execute<{ 'human-readable-text': string }>('x-query-ramblock');
    return r['human-readable-text'];
  } catch (err) {
    if (!(err instanceof QmpError) || err.qmpClass !== 'CommandNotFound') throw err;
    return q.execute<string>('human-monitor-command', { 'command-line': 'info ramblock' });
  }
}

async function backends(q: QmpClient): Promise<VmBackend[]> {
  const children = await q.execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' });
  const out: VmBackend[] = [];
  for (const c of children) {
    const m = /^child<(memory-backend-[a-z0-9-]+)>$/.exec(c.type);
    if (!m) continue;
    const p = `/objects/${c.name}`;
    const get = <T>(property: string): Promise<T> => q.execute<T>('qom-get', { path: p, property });
    const type = m[1]!;
    const canonical = await get<boolean>('x-use-canonical-path-for-ramblock-id').catch(() => false);
    const b: VmBackend = {
      id: c.name,
      idstr: canonical ? p : c.name,
      type,
      share: await get<boolean>('share'),
      size: await get<number>('size'),
    };
    if (type === 'memory-backend-file') {
      b.memPath = await get<string>('mem-path');
      b.offset = await get<number>('offset').catch(() => 0);
    }
    out.push(b);
  }
  return out;
}

/** Asks QEMU for its RAM blocks and backends. */
export async function vmRam(q: QmpClient): Promise<VmRam> {
  const rows = parseRamblockText(await ramblockText(q));
  if (rows.length === 0)
    throw new QmpError('ERR_QMP_PROTOCOL', 'QEMU listed no RAM blocks (info ramblock)', { path: q.path });
  const bks = await backends(q);
  const blocks: VmRamBlock[] = rows.map((r) => {
    const backend = bks.find((b) => b.idstr === r.name);
    return { ...r, ...(backend ? { backend } : {}) };
  });
  const guest = blocks.filter((b) => b.backend);
  const why = (b: VmRamBlock): string | undefined => {
    const be = b.backend!;
    if (be.type !== 'memory-backend-file') return `RAM block '${escapeText(b.name)}' is a ${be.type}, not a file`;
    if (!be.share) return `RAM block '${escapeText(b.name)}' is a memory-backend-file without share=on`;
    if (be.offset) return `RAM block '${escapeText(b.name)}' starts at offset ${be.offset} of its file`;
    let st: fs.Stats;
    try {
      st = fs.statSync(be.memPath!);
    } catch (err) {
      return `RAM block '${escapeText(b.name)}': cannot stat its mem-path '${escapeText(be.memPath!)}' (${(err as NodeJS.ErrnoException).code})`;
    }
    if (!st.isFile())
      return `RAM block '${escapeText(b.name)}': its mem-path '${escapeText(be.memPath!)}' is not a regular file (QEMU made an unnamed file in a directory)`;
    if (st.size !== b.length)
      return `RAM block '${escapeText(b.name)}': its file is ${st.size} bytes, the block ${b.length}`;
    return undefined;
  };
  const reasons =
    guest.length === 0
      ? ['the guest RAM is not given with -object memory-backend-file']
      : guest.map(why).filter((r): r is string => r !== undefined);
  if (reasons.length) return { blocks, sharedFiles: undefined, reason: reasons[0]! };
  return { blocks, sharedFiles: guest as VmRam['sharedFiles'] & object };
}
