/**
 * Where `vm save` keeps QEMU's device state and where `vm restore` finds it: the one place that
 * knows how a snapshot stores it.
 *
 * INTERIM: until the snapshot format carries device state itself, it is kept in a sidecar file
 * `SNAPSHOT.vmstate` (magic, JSON origin, SHA-256, bytes), written atomically after the snapshot.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { snapshotError } from '../errors';
import { registerTemp, unregisterTemp } from '../cleanup';

export interface DeviceState {
  /** QEMU's migration stream without the RAM that fixedram moves. */
  bytes: Buffer;
  /** How the stream was made: `x-ignore-shared` (RAM in the snapshot's blocks) or `mapped-ram`. */
  kind: 'x-ignore-shared' | 'mapped-ram';
  machineType?: string;
  qemuVersion?: string;
  capabilities: string[];
}

/** Largest device state accepted (QEMU writes a few hundred KB for a small machine). */
export const kMaxDeviceState = 256 << 20;
const kMagic = Buffer.from('FXRVMST1', 'latin1');

const sidecar = (snapshot: string): string => `${snapshot}.vmstate`;

/** Stores the device state with the snapshot at `snapshot` (atomically; fsync when asked). */
export function writeDeviceState(snapshot: string, state: DeviceState, fsync: boolean): void {
  const meta = Buffer.from(JSON.stringify({
    kind: state.kind, machineType: state.machineType, qemuVersion: state.qemuVersion, capabilities: state.capabilities,
    length: state.bytes.length, sha256: crypto.createHash('sha256').update(state.bytes).digest('hex'),
  }), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(meta.length);
  const out = sidecar(snapshot);
  const tmp = path.join(path.dirname(out), `.${path.basename(out)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  registerTemp(tmp);
  try {
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      fs.writeSync(fd, Buffer.concat([kMagic, len, meta, state.bytes]));
      if (fsync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, out);
  } finally {
    fs.rmSync(tmp, { force: true });
    unregisterTemp(tmp);
  }
}

/** The device state stored with a snapshot, or undefined when it has none. Invalid → exit 3. */
export function readDeviceState(snapshot: string): DeviceState | undefined {
  let data: Buffer;
  try {
    const fd = fs.openSync(sidecar(snapshot), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw snapshotError('ERR_SNAPSHOT_INVALID', `'${sidecar(snapshot)}' is not a regular file`);
      if (st.size > kMaxDeviceState + 65536) throw snapshotError('ERR_SNAPSHOT_INVALID', `device state '${sidecar(snapshot)}' is larger than ${kMaxDeviceState} bytes`);
      data = Buffer.alloc(st.size);
      let off = 0;
      while (off < data.length) {
        const n = fs.readSync(fd, data, off, data.length - off, off);
        if (n === 0) break;
        off += n;
      }
      data = data.subarray(0, off);
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const bad = (why: string): never => {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `the device state of '${snapshot}' is invalid: ${why}`);
  };
  if (data.length < 12 || !data.subarray(0, 8).equals(kMagic)) bad('bad magic');
  const metaLen = data.readUInt32LE(8);
  if (metaLen > 65536 || 12 + metaLen > data.length) bad('truncated');
  let meta: { kind?: unknown; machineType?: unknown; qemuVersion?: unknown; capabilities?: unknown; length?: unknown; sha256?: unknown };
  try {
    meta = JSON.parse(data.subarray(12, 12 + metaLen).toString('utf8')) as typeof meta;
  } catch {
    return bad('unreadable origin');
  }
  const bytes = data.subarray(12 + metaLen);
  if (meta.length !== bytes.length) {
    throw snapshotError('ERR_SNAPSHOT_TRUNCATED', `the device state of '${snapshot}' is truncated: ${bytes.length} of ${String(meta.length)} bytes`);
  }
  if (crypto.createHash('sha256').update(bytes).digest('hex') !== meta.sha256) bad('checksum mismatch');
  if (meta.kind !== 'x-ignore-shared' && meta.kind !== 'mapped-ram') bad('unknown kind');
  return {
    bytes: Buffer.from(bytes), kind: meta.kind as DeviceState['kind'],
    ...(typeof meta.machineType === 'string' ? { machineType: meta.machineType } : {}),
    ...(typeof meta.qemuVersion === 'string' ? { qemuVersion: meta.qemuVersion } : {}),
    capabilities: Array.isArray(meta.capabilities) ? meta.capabilities.filter((c): c is string => typeof c === 'string') : [],
  };
}
