/** Opening any RAM image fixedram reads, detected by its magic. */
import * as fs from 'node:fs';
import { snapshotError } from './errors';
import { kMagic } from './format';
import { openQemuImage, isQemuMagic } from './qemu';
import { fixedramImage, openImageFile, openSnapshot, type RamImage } from './snapshot';

/** Opens a fixedram snapshot or a QEMU mapped-ram file (also inside a libvirt save image). */
export function openImage(file: string): RamImage {
  const head = Buffer.alloc(16);
  let n = 0;
  const { fd } = openImageFile(file);
  try {
    n = fs.readSync(fd, head, 0, 16, 0);
  } finally {
    fs.closeSync(fd);
  }
  const magic = head.subarray(0, n);
  if (magic.length >= 8 && magic.subarray(0, 8).equals(kMagic)) return fixedramImage(openSnapshot(file));
  if (isQemuMagic(magic)) return openQemuImage(file);
  if (n < 8) {
    throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `'${file}' is too short (${n} bytes) to be a snapshot`, { path: file, offset: n });
  }
  throw snapshotError('ERR_SNAPSHOT_INVALID', `'${file}' is not a fixedram snapshot or a QEMU mapped-ram file (unknown magic)`,
    { path: file, offset: 0 });
}
