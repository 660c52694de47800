/** Reader of QEMU mapped-ram migration files (QEMU >= 9). */
import { snapshotError } from './errors';
import type { RamImage } from './snapshot';

const kQevm = Buffer.from('QEVM', 'latin1');
const kLibvirt = Buffer.from('LibvirtQemudSave', 'latin1');
const kLibvirtPart = Buffer.from('LibvirtQemudPart', 'latin1');

export function isQemuMagic(head: Buffer): boolean {
  return (head.length >= 4 && head.subarray(0, 4).equals(kQevm)) ||
    (head.length >= 16 && (head.subarray(0, 16).equals(kLibvirt) || head.subarray(0, 16).equals(kLibvirtPart)));
}

export function openQemuImage(file: string): RamImage {
  throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `'${file}': QEMU mapped-ram files are not supported yet`, { path: file });
}
