/** Opening any RAM image fixedram reads, detected by its magic. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { kMaxDeviceStateBytes, type DeviceState } from './devstate';
import { ioError, isSystemError, snapshotError, withPath } from './errors';
import { lockPathFor } from './lock';
import { native } from './native';
import { kMagic, unpackBitmap } from './format';
import { isQemuMagic, parseQemu, type ByteSource, type QemuDetails } from './qemu';
import { fixedramImage, newTables, openImageFile, openSnapshot, type BlockTables, type RamImage } from './snapshot';
import type { WindowTables } from './tables';

/** Opens a fixedram snapshot or a QEMU mapped-ram file (also inside a libvirt save image). */
export function openImage(file: string): RamImage {
  const head = Buffer.alloc(16);
  let n: number;
  const { fd } = openImageFile(file);
  try {
    n = fs.readSync(fd, head, 0, 16, 0);
  } catch (err) {
    throw withPath(err, file);
  } finally {
    fs.closeSync(fd);
  }
  const magic = head.subarray(0, n);
  if (magic.length >= 8 && magic.subarray(0, 8).equals(kMagic)) return fixedramImage(openSnapshot(file));
  if (isQemuMagic(magic)) return openQemuImage(file);
  if (n < 8) {
    throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `'${file}' is too short (${n} bytes) to be a snapshot`, {
      path: file,
      offset: n,
    });
  }
  throw snapshotError(
    'ERR_SNAPSHOT_INVALID',
    `'${file}' is not a fixedram snapshot or a QEMU mapped-ram file (unknown magic)`,
    { path: file, offset: 0 },
  );
}

/** A {@link ByteSource} over an open file: positioned reads, EINTR retried, short only at end of file. */
function fileSource(fd: number, size: number): ByteSource {
  return {
    size,
    read: (offset, length) => {
      const out = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        let k: number;
        try {
          k = fs.readSync(fd, out, done, length - done, offset + done);
        } catch (err) {
          if (isSystemError(err) && (err.code === 'EINTR' || err.code === 'EAGAIN')) continue;
          throw err;
        }
        if (k === 0) break;
        done += k;
      }
      return out.subarray(0, done);
    },
  };
}

/**
 * Opens a QEMU mapped-ram file (or a libvirt "sparse" save image) read-only and parses it in full
 * (qemu.ts). An interrupted save is returned with state 'incomplete' (load and verify refuse it).
 * @throws ERR_SNAPSHOT_TRUNCATED, ERR_SNAPSHOT_INVALID, ERR_SNAPSHOT_UNSUPPORTED (exit 3), system errors.
 */
export function openQemuImage(file: string): RamImage {
  const { fd, size } = openImageFile(file);
  try {
    const src = fileSource(fd, size);
    const p = parseQemu(src);
    if (p.incomplete) p.incomplete.path = file;
    let closed = false;
    return {
      format: 'qemu-mapped-ram',
      path: file,
      fd,
      size,
      blocks: p.blocks.map((b) => ({
        name: b.name,
        length: b.length,
        pageSize: b.pageSize,
        pages: b.pages,
        pagesOffset: b.pagesOffset,
        bitmapOffset: b.bitmapOffset,
        presentPages: b.presentPages,
      })),
      hasChecksums: false,
      state: p.incomplete ? 'incomplete' : 'complete',
      ...(p.incomplete ? { incomplete: p.incomplete } : {}),
      details: { ...p.details },
      checkTables: (): void => undefined,
      readTableWindow: (i: number, first: number, count: number, into: WindowTables): number => {
        const b = p.blocks[i];
        if (!b) throw new RangeError(`no block ${i}`);
        const words = p.bitmaps[i]!.subarray(first / 8, first / 8 + Math.ceil(count / 64) * 8);
        into.present.fill(0, 0, count);
        into.csums.fill(0, 0, 8 * count);
        return unpackBitmap(words, count, into.present, b.name, b.bitmapOffset + first / 8);
      },
      readTables: (i: number): BlockTables => {
        const b = p.blocks[i];
        if (!b) throw new RangeError(`no block ${i}`);
        const t = newTables(b.pages);
        t.presentCount = unpackBitmap(p.bitmaps[i]!, b.pages, t.present, b.name, b.bitmapOffset);
        return t;
      },
      captureDeviceState: (): DeviceState | undefined => {
        if (!p.parts) return undefined;
        const { head, tail, libvirt } = p.parts;
        const total = head.length + tail.length + (libvirt?.length ?? 0);
        if (total > kMaxDeviceStateBytes) {
          throw snapshotError(
            'ERR_SNAPSHOT_UNSUPPORTED',
            `the device state of '${file}' is ${total} bytes; a snapshot keeps at most ${kMaxDeviceStateBytes}`,
            { path: file },
          );
        }
        return qemuDeviceState(p.details, {
          head: src.read(head.offset, head.length),
          tail: src.read(tail.offset, tail.length),
          ...(libvirt ? { libvirt: src.read(libvirt.offset, libvirt.length) } : {}),
        });
      },
      close: () => {
        if (closed) return;
        closed = true;
        fs.closeSync(fd);
      },
    };
  } catch (err) {
    fs.closeSync(fd);
    // (FixedramError declares `path`, so the property exists even when it is undefined)
    if (err && typeof err === 'object' && (err as { path?: unknown }).path === undefined)
      Object.assign(err, { path: file });
    throw err;
  }
}

/** The device state of a parsed mapped-ram stream, with its origin. */
function qemuDeviceState(
  d: QemuDetails,
  bytes: { head: Uint8Array; tail: Uint8Array; libvirt?: Uint8Array },
): DeviceState {
  const lv = d.libvirt;
  return {
    kind: 'qemu-mapped-ram',
    origin: {
      source: lv ? 'libvirt-save-image' : 'qemu-mapped-ram-file',
      machineType: d.machineType,
      capabilities: d.capabilities,
      targetPageSize: d.targetPageSize,
      ...(lv
        ? {
            libvirt: {
              ...(lv.domainName !== undefined ? { domainName: lv.domainName } : {}),
              wasRunning: lv.wasRunning,
              version: lv.version,
              format: lv.format,
            },
          }
        : {}),
    },
    head: bytes.head,
    ramSection: {
      sectionId: d.ramSectionId,
      instanceId: d.ramInstanceId,
      version: d.ramSectionVersion,
      footers: d.sectionFooters ?? false,
    },
    tail: bytes.tail,
    ...(bytes.libvirt ? { libvirt: bytes.libvirt } : {}),
  };
}

/** The pid a running `save --update` of `file` wrote into its lock file, if it is alive. */
function updaterPid(file: string): number | undefined {
  try {
    const text = fs.readFileSync(lockPathFor(path.resolve(file)), 'utf8').trim();
    if (!/^\d+$/.test(text)) return undefined;
    const pid = Number(text);
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/**
 * Whether a `save --update` is rewriting `file` in place right now (it holds the exclusive flock):
 * its pid when it is, undefined when nobody holds the lock. Only probes: takes no lock it keeps.
 */
export function runningUpdate(file: string): { pid?: number } | undefined {
  const { fd } = openImageFile(file);
  try {
    if (native().flock(fd, false)) return undefined;
    const pid = updaterPid(file);
    return pid !== undefined ? { pid } : {};
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Opens an image for reading (load, verify) under a shared flock: the lock `save --update` holds
 * exclusively while it rewrites a snapshot in place. The lock is taken BEFORE the header is read,
 * so what is read is never a half-updated file mistaken for a complete one. When an update holds
 * it, the error says "being updated by pid N" (exit 4); a file marked UPDATING whose lock is free
 * is an interrupted update (exit 3, from the header). The lock goes with image.close().
 */
export function openImageShared(file: string): RamImage {
  const { fd: lockFd } = openImageFile(file);
  try {
    if (!native().flock(lockFd, false)) {
      const pid = updaterPid(file);
      throw ioError(
        'ERR_LOCKED',
        `'${file}' is being updated in place by ${pid !== undefined ? `pid ${pid}` : 'another process'} ` +
          '(save --update); try again when it is done',
        { path: file },
      );
    }
    const image = openImage(file);
    const a = fs.fstatSync(lockFd);
    const b = fs.fstatSync(image.fd);
    if (a.ino !== b.ino || a.dev !== b.dev) {
      image.close();
      throw ioError('ERR_SOURCE_CHANGED', `'${file}' was replaced while it was opened; try again`, { path: file });
    }
    const close = image.close.bind(image);
    image.close = (): void => {
      try {
        close();
      } finally {
        fs.closeSync(lockFd);
      }
    };
    return image;
  } catch (err) {
    try {
      fs.closeSync(lockFd);
    } catch {
      /* closed */
    }
    throw err;
  }
}
