/**
 * The device state of a VM as `vm save` stores it and `vm restore` reads it: a record in the
 * snapshot itself (flag DEVICE_STATE, see ../devstate.ts and docs/format-v1.md).
 * - shared-file RAM: kind `qemu-stream`, the whole stream QEMU wrote with x-ignore-shared (device
 *   state plus the small RAM blocks that are not shared files: ROMs, device RAM);
 * - other RAM: kind `qemu-mapped-ram`, kept by `convert` from QEMU's mapped-ram file.
 */
import { kMaxDeviceStateBytes, type DecodedDeviceState, type DeviceState } from '../devstate';
import { integrityError, snapshotError } from '../errors';
import { snapshotDeviceState } from '../snapshot';

export { kMaxDeviceStateBytes };

/** The record for a stream QEMU wrote with x-ignore-shared. */
export function sharedFileDeviceState(
  stream: Uint8Array,
  origin: { qemuVersion: string; machineType?: string },
): DeviceState {
  return {
    kind: 'qemu-stream',
    origin: {
      source: 'fixedram vm save (QMP, x-ignore-shared)',
      capabilities: ['x-ignore-shared'],
      qemuVersion: origin.qemuVersion,
      ...(origin.machineType ? { machineType: origin.machineType } : {}),
    },
    stream,
  };
}

/** True for a record made by {@link sharedFileDeviceState}: the RAM is in the snapshot's blocks. */
export function isSharedFileState(ds: DeviceState): boolean {
  return ds.kind === 'qemu-stream' && (ds.origin.capabilities ?? []).includes('x-ignore-shared');
}

/**
 * The device state stored in a snapshot, or undefined when it has none. A malformed or truncated
 * record is exit 3, a checksum mismatch exit 1: never fed to QEMU.
 */
export function readVmDeviceState(snapshot: string): DecodedDeviceState | undefined {
  const ds = snapshotDeviceState(snapshot);
  if (ds && !ds.checksumOk) {
    throw integrityError(`the device state of '${snapshot}' fails its checksum: it is not fed to QEMU`, {
      path: snapshot,
    });
  }
  if (ds?.stream && (ds.stream.length < 8 || Buffer.from(ds.stream.subarray(0, 4)).toString('latin1') !== 'QEVM')) {
    throw snapshotError('ERR_SNAPSHOT_INVALID', `the device state of '${snapshot}' is not a QEMU migration stream`, {
      path: snapshot,
    });
  }
  return ds;
}
