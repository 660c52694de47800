/**
 * Opening an existing fixedram snapshot: header, block table and (optionally) the per-block
 * bitmaps and checksum tables, each validated before use.
 */
import * as fs from 'node:fs';
import { decodeDeviceState, type DecodedDeviceState, type DeviceState } from './devstate';
import { isSystemError, snapshotError, withPath, type FixedramError } from './errors';
import {
  decodeFixedHeader,
  decodeHeader,
  kFlagComplete,
  kFlagUpdating,
  kHeaderBytes,
  firstAbsentNonZero,
  paddingOf,
  unpackBitmap,
  type BlockLayout,
  type Padding,
  type SnapshotHeader,
} from './format';
import { explainAllocation } from './limits';
import { native } from './native';
import { checkTables, readTableWindow, type WindowTables } from './tables';

/** A block's present-page bytes and checksum table, in shared memory so channels can use them. */
export interface BlockTables {
  /** One byte per page: 1 = present. */
  present: Uint8Array;
  /** One little-endian XXH3-64 per page (0 for absent pages). */
  csums: Uint8Array;
  presentCount: number;
}

export interface SnapshotFile {
  path: string;
  fd: number;
  size: number;
  header: SnapshotHeader;
}

/** Allocates shared tables for a block of `pages` pages. */
export function newTables(pages: number): BlockTables {
  try {
    return {
      present: new Uint8Array(new SharedArrayBuffer(Math.max(pages, 1))).subarray(0, pages),
      csums: new Uint8Array(new SharedArrayBuffer(Math.max(pages * 8, 8))).subarray(0, pages * 8),
      presentCount: 0,
    };
  } catch (err) {
    throw explainAllocation(err, `the page tables of a block of ${pages} pages`, pages * 9);
  }
}

function readExact(fd: number, length: number, position: number, into?: Uint8Array): Uint8Array {
  const buf = into ?? Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, done, length - done, position + done);
    } catch (err) {
      // libuv does not retry EINTR for synchronous reads (possible on NFS and FUSE)
      if (isSystemError(err) && (err.code === 'EINTR' || err.code === 'EAGAIN')) continue;
      throw err;
    }
    if (n === 0) {
      throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `truncated snapshot: end of file at offset ${position + done}`, {
        offset: position + done,
      });
    }
    done += n;
  }
  return buf;
}

/**
 * Opens an image file (a snapshot or a QEMU file) read-only or read-write, refusing anything but a
 * regular file. System errors carry the path; the descriptor is closed on every failure.
 */
export function openImageFile(file: string, writable = false): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw isSystemError(err) ? Object.assign(err, { path: file }) : err;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw snapshotError('ERR_SNAPSHOT_INVALID', `'${file}' is not a regular file`, { path: file });
    return { fd, size: st.size };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/**
 * Opens a snapshot read-only (or read-write) and decodes its header and block table. Does not
 * require the snapshot to be complete; see {@link requireComplete}.
 */
export function openSnapshot(file: string, writable = false): SnapshotFile {
  const { fd, size } = openImageFile(file, writable);
  try {
    const head = Buffer.from(readExact(fd, Math.min(kHeaderBytes, size), 0));
    const { tableBytes } = decodeFixedHeader(head, size);
    const all = Buffer.concat([head, readExact(fd, tableBytes, kHeaderBytes)]);
    const header = decodeHeader(all, size, native().hash64);
    return { path: file, fd, size, header };
  } catch (err) {
    fs.closeSync(fd);
    withPath(err, file);
    // (FixedramError declares `path` as a class field, so test the value, not `'path' in err`)
    if (err && typeof err === 'object' && (err as { path?: unknown }).path === undefined)
      Object.assign(err, { path: file });
    throw err;
  }
}

/** The one-line reason a snapshot cannot be used as is, or undefined when it is complete. */
export function incompleteReason(header: SnapshotHeader): FixedramError | undefined {
  if (header.flags & kFlagUpdating) {
    return snapshotError(
      'ERR_SNAPSHOT_INCOMPLETE',
      'snapshot has an interrupted in-place update; re-run `fixedram save --update` with the same blocks to repair it',
      { offset: 12 },
    );
  }
  if (!(header.flags & kFlagComplete)) {
    return snapshotError('ERR_SNAPSHOT_INCOMPLETE', 'incomplete snapshot: the save that wrote it did not finish', {
      offset: 12,
    });
  }
  return undefined;
}

export function requireComplete(snap: SnapshotFile): void {
  const reason = incompleteReason(snap.header);
  if (reason) {
    reason.path = snap.path;
    throw reason;
  }
}

/**
 * Reads a block's bitmap and checksum table into shared memory and checks them against the
 * metadata checksum and the stored present count.
 */
export function readTables(snap: SnapshotFile, b: BlockLayout, index: number): BlockTables {
  const metaBytes = b.bitmapBytes + b.checksumsBytes;
  const meta = sharedBytes(metaBytes + b.pages, b.name).subarray(0, metaBytes);
  try {
    readExact(snap.fd, b.bitmapBytes, b.bitmapOffset, meta.subarray(0, b.bitmapBytes));
    readExact(snap.fd, b.checksumsBytes, b.checksumsOffset, meta.subarray(b.bitmapBytes));
  } catch (err) {
    throw withPath(err, snap.path);
  }
  const ctx = { block: b.name, path: snap.path };
  if (native().hash64(meta) !== snap.header.metadataChecksums[index]) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `corrupt metadata: the bitmap or checksum table of block '${b.name}' fails its checksum ` +
        `(bitmap at 0x${b.bitmapOffset.toString(16)}, checksums at 0x${b.checksumsOffset.toString(16)})`,
      { ...ctx, offset: b.bitmapOffset },
    );
  }
  const present = new Uint8Array(meta.buffer, metaBytes, b.pages);
  const count = unpackBitmap(meta.subarray(0, b.bitmapBytes), b.pages, present, b.name, b.bitmapOffset);
  if (count !== snap.header.presentPages[index]) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `corrupt metadata: block '${b.name}' bitmap has ${count} pages set, the block table says ${snap.header.presentPages[index]}`,
      { ...ctx, offset: b.bitmapOffset },
    );
  }
  // the checksum of an absent page is 0 (format v1); anything else is a corrupt table
  const csums = meta.subarray(b.bitmapBytes);
  const p = firstAbsentNonZero(meta.subarray(0, b.bitmapBytes), csums, b.pages);
  if (p >= 0) {
    throw snapshotError(
      'ERR_SNAPSHOT_INVALID',
      `corrupt metadata: block '${b.name}' page ${p} is absent but its checksum entry is not 0`,
      { ...ctx, page: p, offset: b.checksumsOffset + 8 * p },
    );
  }
  return { present, csums, presentCount: count };
}

/**
 * Reads and decodes the device-state record of a snapshot (flag DEVICE_STATE), or undefined when it
 * has none. The record's size is bounded (checked with the header); a checksum mismatch is reported
 * in the result (`checksumOk`), structural problems throw (exit 3).
 */
export function readDeviceState(snap: SnapshotFile): DecodedDeviceState | undefined {
  const d = snap.header.deviceState;
  if (!d) return undefined;
  try {
    return decodeDeviceState(readExact(snap.fd, d.bytes, d.offset), d.offset, native().hash64);
  } catch (err) {
    if (err && typeof err === 'object' && (err as { path?: unknown }).path === undefined)
      Object.assign(err, { path: snap.path });
    throw err;
  }
}

/** Opens a snapshot, returns its device state (or undefined when it has none) and closes it again. */
export function snapshotDeviceState(file: string): DecodedDeviceState | undefined {
  const snap = openSnapshot(file);
  try {
    return readDeviceState(snap);
  } finally {
    fs.closeSync(snap.fd);
  }
}

/**
 * Shared memory for a block's tables. The size is bounded by the file (the tables lie inside it),
 * but a sparse file can still ask for more than this process can hold: that is a typed error.
 */
function sharedBytes(bytes: number, block: string): Uint8Array {
  try {
    return new Uint8Array(new SharedArrayBuffer(Math.max(bytes, 8)));
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `block '${block}': its bitmap and checksum table (${bytes} bytes with the page map) do not fit in memory`,
      { block },
    );
  }
}

/** A block of any readable RAM image (a fixedram snapshot or a QEMU mapped-ram file). */
export interface ImageBlock {
  name: string;
  length: number;
  pageSize: number;
  pages: number;
  pagesOffset: number;
  bitmapOffset: number;
  presentPages: number;
}

/** A RAM image opened for reading; every format detected by its magic provides this. */
export interface RamImage {
  format: 'fixedram' | 'qemu-mapped-ram';
  path: string;
  fd: number;
  size: number;
  blocks: ImageBlock[];
  /** Whether per-page checksums exist (fixedram) or not (QEMU). */
  hasChecksums: boolean;
  /** complete; incomplete (a save that did not finish); updating (an interrupted in-place update). */
  state: 'complete' | 'incomplete' | 'updating';
  /** The reason the image cannot be loaded as is, when state is not complete. */
  incomplete?: Error;
  /** Byte ranges outside every region, which must read as zero (fixedram snapshots). */
  padding?: Padding[];
  /** Format-specific facts for `inspect` (version, machine type, wrapper, ...). */
  details?: Record<string, unknown>;
  /**
   * Checks block i's tables before any is used (fixedram: the metadata checksum, streamed, the
   * present count, zero entries of absent pages). Memory and work: one window, the data present.
   */
  checkTables(index: number): void;
  /**
   * Reads the tables of pages [first, first + count) of block i (first a multiple of 64, count at
   * most a window) into `into`; returns the pages present. Call checkTables(i) first.
   */
  readTableWindow(index: number, first: number, count: number, into: WindowTables): number;
  /**
   * Reads and validates the whole bitmap (and checksums) of block i into memory of its size.
   * @deprecated whole-block arrays (10 bytes per page): use checkTables and readTableWindow.
   */
  readTables(index: number): BlockTables;
  /** The stored VM device state (fixedram snapshots with flag DEVICE_STATE), read and decoded on demand. */
  readDeviceState?(): DecodedDeviceState | undefined;
  /** The non-RAM part of a QEMU stream (device state), to keep in a snapshot (QEMU images). */
  captureDeviceState?(): DeviceState | undefined;
  close(): void;
}

/** A fixedram snapshot as a {@link RamImage}. */
export function fixedramImage(snap: SnapshotFile): RamImage {
  const reason = incompleteReason(snap.header);
  if (reason) reason.path = snap.path;
  return {
    format: 'fixedram',
    path: snap.path,
    fd: snap.fd,
    size: snap.size,
    blocks: snap.header.blocks.map((b, i) => ({
      name: b.name,
      length: b.length,
      pageSize: b.pageSize,
      pages: b.pages,
      pagesOffset: b.pagesOffset,
      bitmapOffset: b.bitmapOffset,
      presentPages: snap.header.presentPages[i]!,
    })),
    hasChecksums: true,
    state:
      snap.header.flags & kFlagUpdating ? 'updating' : snap.header.flags & kFlagComplete ? 'complete' : 'incomplete',
    details: {
      version: snap.header.version,
      flags: snap.header.flags,
      metadataEnd: snap.header.metadataEnd,
      ...(snap.header.deviceState ? { deviceStateOffset: snap.header.deviceState.offset } : {}),
    },
    padding: paddingOf(snap.header),
    ...(reason ? { incomplete: reason } : {}),
    checkTables: (i) => {
      const b = snap.header.blocks[i]!;
      checkTables(snap.fd, snap.path, b, snap.header.metadataChecksums[i]!, snap.header.presentPages[i]!);
    },
    readTableWindow: (i, first, count, into) =>
      readTableWindow(snap.fd, snap.path, snap.header.blocks[i]!, first, count, into),
    readTables: (i) => readTables(snap, snap.header.blocks[i]!, i),
    readDeviceState: () => readDeviceState(snap),
    close: () => fs.closeSync(snap.fd),
  };
}
