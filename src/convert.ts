/**
 * `fixedram convert`: a fixedram snapshot (with per-page XXH3 checksums) of the RAM blocks of a QEMU
 * mapped-ram file, so a VM's RAM can be archived and verified later.
 *
 * The QEMU file is opened and validated in full first (structure, bitmaps, the END record of
 * "ram"); then the snapshot is written with the same commit protocol as `save` (temp file, channels,
 * metadata, complete flag, rename). Each block's source is the QEMU file itself at the block's
 * pages_offset, masked by the QEMU bitmap: pages whose bit is clear are zero and never read, pages
 * whose bit is set but hold only zeros become absent in the snapshot.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { identityOf, sameFile } from './blocks';
import { ioError, isSystemError, snapshotError, usageError } from './errors';
import { kMinPageSize } from './format';
import { openImage } from './image';
import { checkBatchBytes, checkChannels, checkFsync, requireOption } from './options';
import { checkOutputPath } from './outputs';
import type { ProgressSink } from './progress';
import { writeSnapshot, type SavedBlock, type SnapshotSource } from './writer';

export interface ConvertOptions {
  /** The QEMU mapped-ram file (or libvirt "sparse" save image) to read. */
  input: string;
  /** The fixedram snapshot to write (atomically). */
  output: string;
  /** Worker threads; default: the number of CPUs. */
  channels?: number;
  /** fsync the snapshot and its directory (default true). */
  fsync?: boolean;
  /** Write page data with O_DIRECT (falls back to buffered I/O with a warning where refused). */
  directIo?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface ConvertResult {
  command: 'convert';
  /** The QEMU file read (absolute path). */
  input: string;
  inputFormat: 'qemu-mapped-ram';
  /** QEMU machine type from the configuration section (e.g. pc-q35-10.0). */
  machineType: string;
  output: string;
  fileSize: number;
  /** One entry per block, in the QEMU file's order; `path` is the input file. */
  blocks: SavedBlock[];
  presentPages: number;
  zeroPages: number;
  /** Bytes of the device-state record kept in the snapshot (QEMU's non-RAM stream, libvirt data). */
  deviceStateBytes: number;
  bytesRead: number;
  bytesWritten: number;
  channels: number;
  seconds: number;
}

/**
 * Converts a QEMU mapped-ram file into a fixedram snapshot.
 * @throws ERR_USAGE (bad options, the output is the input, the input is not a QEMU file),
 *   ERR_SNAPSHOT_* (the input is invalid, truncated, incomplete or unsupported: exit 3),
 *   ERR_SOURCE_CHANGED (the input changed while it was read), ERR_LOCKED, system errors, ERR_INTERRUPTED.
 */
export async function convert(opts: ConvertOptions): Promise<ConvertResult> {
  const started = process.hrtime.bigint();
  const channels = checkChannels(opts.channels);
  requireOption(opts.input, 'an input file is required');
  requireOption(opts.output, 'an output file is required (-o FILE)');
  const fsync = checkFsync(opts.fsync);
  const batchBytes = checkBatchBytes(opts.batchBytes);
  const output = path.resolve(opts.output);
  const input = path.resolve(opts.input);
  checkOutputPath(output);

  // open and validate the whole input before anything is created
  const image = openImage(input);
  try {
    if (image.format !== 'qemu-mapped-ram') {
      throw usageError(`'${opts.input}' is a ${image.format} snapshot already, not a QEMU mapped-ram file`, {
        path: input,
      });
    }
    if (image.incomplete) throw image.incomplete;
    const id = fs.fstatSync(image.fd, { bigint: true });
    const out = identityOf(output);
    if (out && sameFile(out, id))
      throw usageError(`output '${opts.output}' is the input file itself`, { path: output });
    for (const b of image.blocks) {
      if (b.pageSize < kMinPageSize) {
        throw snapshotError(
          'ERR_SNAPSHOT_UNSUPPORTED',
          `block '${b.name}' has ${b.pageSize}-byte pages; a fixedram snapshot needs pages of at least ${kMinPageSize} bytes`,
          { block: b.name, path: input },
        );
      }
    }
    const sources = image.blocks.map((b, i): SnapshotSource => ({
      name: b.name,
      length: b.length,
      pageSize: b.pageSize,
      fd: image.fd,
      path: input,
      base: b.pagesOffset,
      // QEMU's bitmap, one window at a time
      maskWindow: (first: number, count: number): Uint8Array => {
        const into = { present: new Uint8Array(count), csums: new Uint8Array(8 * count) };
        image.readTableWindow(i, first, count, into);
        return into.present;
      },
    }));
    const details = (image.details ?? {}) as { machineType?: string };
    const deviceState = image.captureDeviceState?.();
    opts.logger?.debug({ input, output, blocks: sources.length, machineType: details.machineType }, 'converting');

    const w = await writeSnapshot(output, sources, {
      command: 'convert',
      interrupted: `no snapshot was written; '${output}' is unchanged`,
      channels,
      fsync,
      directIo: opts.directIo ?? false,
      batchBytes,
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(deviceState ? { deviceState } : {}),
      beforeCommit: () => checkInputUnchanged(image.fd, input, id),
    });
    const blocks = w.layout.blocks.map((b, i): SavedBlock => ({
      name: b.name,
      path: input,
      length: b.length,
      pageSize: b.pageSize,
      pages: b.pages,
      presentPages: w.summary.counts[i]!,
      zeroPages: b.pages - w.summary.counts[i]!,
      pagesOffset: b.pagesOffset,
    }));
    return {
      command: 'convert',
      input,
      inputFormat: 'qemu-mapped-ram',
      machineType: details.machineType ?? '',
      output,
      fileSize: w.layout.fileSize,
      blocks,
      presentPages: blocks.reduce((s, b) => s + b.presentPages, 0),
      zeroPages: blocks.reduce((s, b) => s + b.zeroPages, 0),
      deviceStateBytes: w.layout.deviceState?.bytes ?? 0,
      bytesRead: w.bytesRead,
      bytesWritten: w.bytesWritten,
      channels: w.channels,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    image.close();
  }
}

/** The input must still be the same file, with the same size and modification time. */
function checkInputUnchanged(fd: number, input: string, before: fs.BigIntStats): void {
  let now: fs.BigIntStats;
  try {
    now = fs.fstatSync(fd, { bigint: true });
  } catch (err) {
    throw isSystemError(err) ? Object.assign(err, { path: input }) : err;
  }
  if (now.size !== before.size || now.mtimeNs !== before.mtimeNs) {
    throw ioError('ERR_SOURCE_CHANGED', `input '${input}' changed while it was converted (size or modification time)`, {
      path: input,
    });
  }
  const named = identityOf(input);
  if (!named || !sameFile(named, now)) {
    throw ioError('ERR_SOURCE_CHANGED', `input '${input}' was replaced or removed while it was converted`, {
      path: input,
    });
  }
}
