/**
 * `fixedram export`: a QEMU mapped-ram migration file (or a libvirt sparse save image) rebuilt from
 * a snapshot that holds a VM's device state (made by `convert` or `vm save`), which stock QEMU >= 9
 * restores with `-incoming defer`, capability `mapped-ram` (multifd optional) and
 * `migrate-incoming file:FILE`, and `virsh restore` accepts when it is a libvirt image.
 *
 * Order of events (atomic like save):
 *  1. open the snapshot and check it whole: complete, device state present and intact (checksum),
 *     every block's bitmap and checksum table; plan the stream (qemu-writer.ts);
 *  2. lock the output, create a private temp file beside it and size it (sparse) to the stream;
 *  3. write the records, bitmaps and the device state; N channels copy every present page from the
 *     snapshot to its block's pages_offset + index × page size, checking its XXH3 on the way
 *     (absent pages stay holes, which QEMU reads as zero pages it never loads);
 *  4. fdatasync, take the mode and owner of the file it replaces, rename over the output, fsync the
 *     directory.
 * Steps 2 and 4 are the shared protocol of commit.ts (an output that is not a regular file is
 * refused before any work). A failure or an interrupt removes the temp file; the output name keeps
 * what it held.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { identityOf, sameFile } from './blocks';
import type { ChannelBlock } from './channels/messages';
import { writeAt, writeAtomically } from './commit';
import { integrityError, snapshotError, usageError } from './errors';
import { packBitmap } from './format';
import { openImage } from './image';
import { transfer } from './transfer';
import { checkBatchBytes, checkChannels, checkFsync, requireOption } from './options';
import { checkOutputPath } from './outputs';
import type { ProgressSink } from './progress';
import { planMappedRamStream } from './qemu-writer';

export type ExportFormat = 'qemu' | 'libvirt';

export interface ExportOptions {
  /** The fixedram snapshot to read (it must hold a device state of kind qemu-mapped-ram). */
  snapshot: string;
  /** The QEMU file (or libvirt image) to write, atomically. */
  output: string;
  /** Default: libvirt when the snapshot came from a libvirt save image, else qemu. */
  format?: ExportFormat;
  channels?: number;
  /** fsync the output and its directory (default true). */
  fsync?: boolean;
  batchBytes?: number;
  signal?: AbortSignal;
  onProgress?: ProgressSink;
  logger?: Logger;
}

export interface ExportResult {
  command: 'export';
  /** The snapshot read (absolute path). */
  snapshot: string;
  /** The file written (absolute path) and what it is. */
  output: string;
  outputFormat: 'qemu-mapped-ram' | 'libvirt-save-image';
  machineType: string;
  fileSize: number;
  /** Offset of the QEMU stream in the output (the libvirt part's size, else 0). */
  streamOffset: number;
  blocks: {
    name: string;
    length: number;
    pageSize: number;
    pages: number;
    presentPages: number;
    zeroPages: number;
    pagesOffset: number;
  }[];
  /** Bytes of the stream that are not pages (head, records, bitmaps, device sections). */
  deviceStateBytes: number;
  bytesRead: number;
  bytesWritten: number;
  channels: number;
  seconds: number;
}

/**
 * Exports a snapshot with device state as a QEMU mapped-ram file or a libvirt save image.
 * @throws ERR_USAGE (bad options, the output is the snapshot), ERR_SNAPSHOT_* (no device state, an
 *   unusable one, an invalid or incomplete snapshot: exit 3), ERR_INTEGRITY (the device state or a
 *   page fails its checksum: exit 1), ERR_LOCKED, system errors, ERR_INTERRUPTED.
 */
export async function exportSnapshot(opts: ExportOptions): Promise<ExportResult> {
  const started = process.hrtime.bigint();
  const channels = checkChannels(opts.channels);
  requireOption(opts.snapshot, 'a snapshot is required');
  requireOption(opts.output, 'an output file is required (output)');
  const fsync = checkFsync(opts.fsync);
  const batchBytes = checkBatchBytes(opts.batchBytes);
  if (opts.format !== undefined && opts.format !== 'qemu' && opts.format !== 'libvirt') {
    throw usageError(`the export format must be qemu or libvirt (got '${String(opts.format)}')`);
  }
  const output = path.resolve(opts.output);
  checkOutputPath(output); // a regular file or nothing, before any work
  const image = openImage(path.resolve(opts.snapshot));
  try {
    if (image.format !== 'fixedram') {
      throw usageError(`'${opts.snapshot}' is a QEMU mapped-ram file already; export reads fixedram snapshots`, {
        path: image.path,
      });
    }
    if (image.incomplete) throw image.incomplete;
    const ds = image.readDeviceState?.();
    if (!ds) {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `'${opts.snapshot}' holds no device state (CPU and device state of a VM): it is a plain save of RAM files, which QEMU cannot ` +
          'restore a VM from; export needs a snapshot made by `fixedram convert` of a QEMU file or by `fixedram vm save`',
        { path: image.path },
      );
    }
    if (!ds.checksumOk) {
      throw integrityError(`the device state of '${opts.snapshot}' fails its checksum; nothing was exported`, {
        path: image.path,
      });
    }
    if (ds.kind !== 'qemu-mapped-ram') {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `the device state of '${opts.snapshot}' is a complete QEMU stream (${ds.kind}) whose RAM lives in the VM's own backend files; ` +
          'restore it with `fixedram vm restore`, not export',
        { path: image.path },
      );
    }
    const format: ExportFormat = opts.format ?? (ds.libvirt ? 'libvirt' : 'qemu');
    if (format === 'libvirt' && !ds.libvirt) {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `'${opts.snapshot}' did not come from a libvirt save image: it holds no libvirt header and domain XML to write; use --format qemu`,
        { path: image.path },
      );
    }
    const snapId = fs.fstatSync(image.fd, { bigint: true });
    const outId = identityOf(output);
    if (outId && sameFile(outId, snapId))
      throw usageError(`output '${opts.output}' is the snapshot itself`, { path: output });

    const tables = image.blocks.map((_, i) => image.readTables(i));
    let plan: ReturnType<typeof planMappedRamStream>;
    try {
      plan = planMappedRamStream(
        ds,
        image.blocks,
        image.blocks.map((b, i) => packBitmap(tables[i]!.present, b.pages)),
        { libvirt: format === 'libvirt' },
      );
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `cannot export '${opts.snapshot}': ${err.message}`, {
        path: image.path,
      });
    }
    opts.logger?.debug({ output, format, fileSize: plan.fileSize, blocks: plan.blocks.length }, 'stream planned');

    const metaBytes = plan.pieces.reduce((s, p) => s + p.bytes.length, 0);
    const stats = await writeAtomically(
      output,
      {
        size: plan.fileSize,
        fsync,
        ...(opts.logger ? { logger: opts.logger } : {}),
        provisional: (fd) => {
          for (const p of plan.pieces) writeAt(fd, p.bytes, p.offset);
        },
      },
      async ({ fd, path: tmp }) => {
        const blocks: ChannelBlock[] = image.blocks.map((b, i) => ({
          name: b.name,
          pageSize: b.pageSize,
          pages: b.pages,
          snapBase: b.pagesOffset,
          live: { fd, path: tmp },
          liveBase: plan.blocks[i]!.pagesOffset,
          present: tables[i]!.present,
          csums: tables[i]!.csums,
          intent: { verify: true },
        }));
        return transfer({
          kind: 'load',
          command: 'export',
          channels,
          snapshot: image,
          batchBytes,
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
          ...(opts.logger ? { logger: opts.logger } : {}),
          interrupted: `nothing was exported; '${output}' is unchanged`,
          planned: { blocks },
        });
      },
    );
    return {
      command: 'export',
      snapshot: image.path,
      output,
      outputFormat: format === 'libvirt' ? 'libvirt-save-image' : 'qemu-mapped-ram',
      machineType: typeof ds.origin.machineType === 'string' ? ds.origin.machineType : '',
      fileSize: plan.fileSize,
      streamOffset: plan.streamOffset,
      blocks: image.blocks.map((b, i) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        pages: b.pages,
        presentPages: tables[i]!.presentCount,
        zeroPages: b.pages - tables[i]!.presentCount,
        pagesOffset: plan.blocks[i]!.pagesOffset,
      })),
      deviceStateBytes: metaBytes,
      bytesRead: stats.bytesRead,
      bytesWritten: stats.bytesWritten + metaBytes,
      channels: stats.channels,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    image.close();
  }
}
