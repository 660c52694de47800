/**
 * The device-state record of a fixedram snapshot (format v1, flag DEVICE_STATE): an opaque copy of
 * the part of a QEMU migration stream that is not RAM pages, with what is needed to rebuild a
 * stream, and where it came from. Encoding and strict decoding only (no file system); the byte
 * layout is specified in docs/format-v1.md ("Device state"), keep the two in step.
 *
 * The record sits at the end of the file, after the last page region, at a 4 KiB-aligned offset
 * stored in the header (bytes 48–55). A reader that does not know the DEVICE_STATE flag refuses
 * the file (unknown flag bit), so it can never mistake the record for padding.
 */
import { snapshotError } from './errors';

export const kDeviceStateMagic = Buffer.from('FXRDEVST', 'latin1');
export const kDeviceStateVersion = 1;
export const kDeviceStateHeaderBytes = 64;
export const kPartEntryBytes = 16;
/** The record's offset in the file is a multiple of this. */
export const kDeviceStateAlign = 4096;
/** Largest record accepted or written: 256 MiB (a VM's device state is typically well under 1 MiB). */
export const kMaxDeviceStateBytes = 256 * 1024 * 1024;
/** Largest origin (JSON) part: 64 KiB. */
export const kMaxOriginBytes = 64 * 1024;
/** Largest libvirt part (header, domain XML, cookie, padding): 16 MiB. */
export const kMaxLibvirtBytes = 16 * 1024 * 1024;
export const kMaxParts = 8;

/** What the stream bytes are. */
export const kKindQemuMappedRam = 1;
export const kKindQemuStream = 2;
export type DeviceStateKind = 'qemu-mapped-ram' | 'qemu-stream';
const kKinds: Record<number, DeviceStateKind> = {
  [kKindQemuMappedRam]: 'qemu-mapped-ram',
  [kKindQemuStream]: 'qemu-stream',
};

/** Part types. */
export const kPartOrigin = 1;
export const kPartQemuHead = 2;
export const kPartQemuRamSection = 3;
export const kPartQemuTail = 4;
export const kPartQemuStream = 5;
export const kPartLibvirt = 6;
const kRamSectionPartBytes = 16;

/** Where a device state came from (the origin part, stored as a UTF-8 JSON object). */
export interface DeviceStateOrigin {
  /** What produced the stream: a QEMU mapped-ram file, a libvirt save image, QMP (vm save), ... */
  source: string;
  /** QEMU machine type (e.g. pc-q35-10.0), from the stream's configuration section. */
  machineType?: string;
  /** Migration capabilities recorded in the stream (multifd is never recorded by QEMU). */
  capabilities?: string[];
  /** QEMU version, when known (QEMU does not record it in the stream). */
  qemuVersion?: string;
  /** Target page size of the stream (4096 on x86). */
  targetPageSize?: number;
  /** libvirt facts, when it came from a libvirt save image (the raw header and XML are a part). */
  libvirt?: { domainName?: string; wasRunning: boolean; version: number; format: string };
  /** Any further string / number / boolean facts a producer wants to record. */
  [key: string]: unknown;
}

/** The RAM section of a mapped-ram stream, to rebuild it (ids are assigned by QEMU at run time). */
export interface QemuRamSection {
  sectionId: number;
  instanceId: number;
  version: number;
  /** QEMU wrote section footers (0x7e + id) after each record. */
  footers: boolean;
}

/**
 * A device state: either the non-RAM parts of a QEMU mapped-ram stream (`head`: from the stream's
 * magic to the START record of "ram"; `tail`: from just after the END record of "ram" to the end of
 * the stream), or a complete QEMU stream fed as is (`stream`, e.g. an x-ignore-shared migration).
 */
export interface DeviceState {
  kind: DeviceStateKind;
  origin: DeviceStateOrigin;
  head?: Uint8Array;
  ramSection?: QemuRamSection;
  tail?: Uint8Array;
  stream?: Uint8Array;
  /** The bytes in front of the QEMU stream of a libvirt save image: 92-byte header, XML, cookie, padding. */
  libvirt?: Uint8Array;
}

/** What a reader learns from the record without trusting its checksum (for inspect). */
export interface DecodedDeviceState extends DeviceState {
  recordBytes: number;
  /** Stored XXH3-64 of the record. */
  checksum: bigint;
  /** Whether the stored checksum matches the bytes. */
  checksumOk: boolean;
  /** Size of the QEMU stream bytes (head + tail, or stream). */
  streamBytes: number;
}

function partsOf(ds: DeviceState): { type: number; bytes: Uint8Array }[] {
  const origin = Buffer.from(JSON.stringify(ds.origin), 'utf8');
  const parts: { type: number; bytes: Uint8Array }[] = [{ type: kPartOrigin, bytes: origin }];
  if (ds.kind === 'qemu-mapped-ram') {
    if (!ds.head || !ds.tail || !ds.ramSection)
      throw new RangeError('a qemu-mapped-ram device state needs head, ramSection and tail');
    const rs = Buffer.alloc(kRamSectionPartBytes);
    rs.writeUInt32LE(ds.ramSection.sectionId, 0);
    rs.writeUInt32LE(ds.ramSection.instanceId, 4);
    rs.writeUInt32LE(ds.ramSection.version, 8);
    rs.writeUInt32LE(ds.ramSection.footers ? 1 : 0, 12);
    parts.push(
      { type: kPartQemuHead, bytes: ds.head },
      { type: kPartQemuRamSection, bytes: rs },
      { type: kPartQemuTail, bytes: ds.tail },
    );
  } else if (ds.kind === 'qemu-stream') {
    if (!ds.stream) throw new RangeError('a qemu-stream device state needs stream');
    parts.push({ type: kPartQemuStream, bytes: ds.stream });
  } else {
    throw new RangeError(`unknown device-state kind ${String(ds.kind)}`);
  }
  if (ds.libvirt) parts.push({ type: kPartLibvirt, bytes: ds.libvirt });
  return parts;
}

/** Size of the encoded record of `ds` (checks the bounds). */
export function deviceStateBytes(ds: DeviceState): number {
  const parts = partsOf(ds);
  checkPartBounds(
    parts.map((p) => ({ type: p.type, bytes: p.bytes.length })),
    (m) => new RangeError(m),
  );
  return kDeviceStateHeaderBytes + parts.length * kPartEntryBytes + parts.reduce((s, p) => s + p.bytes.length, 0);
}

function checkPartBounds(parts: { type: number; bytes: number }[], fail: (m: string) => Error): void {
  let total = kDeviceStateHeaderBytes + parts.length * kPartEntryBytes;
  for (const p of parts) {
    if (p.type === kPartOrigin && p.bytes > kMaxOriginBytes)
      throw fail(`the device-state origin is ${p.bytes} bytes (at most ${kMaxOriginBytes})`);
    if (p.type === kPartLibvirt && p.bytes > kMaxLibvirtBytes)
      throw fail(`the libvirt data is ${p.bytes} bytes (at most ${kMaxLibvirtBytes})`);
    total += p.bytes;
  }
  if (total > kMaxDeviceStateBytes) throw fail(`the device state is ${total} bytes (at most ${kMaxDeviceStateBytes})`);
}

/** Encodes the record; the checksum (XXH3-64 of the record with its checksum field zeroed) is filled in. */
export function encodeDeviceState(ds: DeviceState, hash64: (b: Uint8Array) => bigint): Buffer {
  const parts = partsOf(ds);
  const total = deviceStateBytes(ds);
  const buf = Buffer.alloc(total);
  kDeviceStateMagic.copy(buf, 0);
  buf.writeUInt32LE(kDeviceStateVersion, 8);
  buf.writeUInt32LE(ds.kind === 'qemu-mapped-ram' ? kKindQemuMappedRam : kKindQemuStream, 12);
  buf.writeBigUInt64LE(BigInt(total), 16);
  buf.writeUInt32LE(parts.length, 24);
  let data = kDeviceStateHeaderBytes + parts.length * kPartEntryBytes;
  parts.forEach((p, i) => {
    const e = kDeviceStateHeaderBytes + i * kPartEntryBytes;
    buf.writeUInt32LE(p.type, e);
    buf.writeBigUInt64LE(BigInt(p.bytes.length), e + 8);
    buf.set(p.bytes, data);
    data += p.bytes.length;
  });
  buf.writeBigUInt64LE(hash64(buf), 32);
  return buf;
}

/**
 * Decodes and validates a record read from a snapshot (`buf` is the whole record: from the offset in
 * the header to the end of the file). Structural problems throw ERR_SNAPSHOT_* (exit 3); a checksum
 * mismatch does not throw: `checksumOk` says it (verify reports it as an integrity failure).
 */
export function decodeDeviceState(
  buf: Uint8Array,
  offset: number,
  hash64: (b: Uint8Array) => bigint,
): DecodedDeviceState {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const bad = (m: string, at = 0): Error =>
    snapshotError('ERR_SNAPSHOT_INVALID', `corrupt device-state record: ${m}`, { offset: offset + at });
  if (b.length < kDeviceStateHeaderBytes)
    throw bad(`${b.length} bytes, shorter than its ${kDeviceStateHeaderBytes}-byte header`);
  if (!b.subarray(0, 8).equals(kDeviceStateMagic)) throw bad('bad magic');
  const version = b.readUInt32LE(8);
  if (version !== kDeviceStateVersion) {
    throw snapshotError(
      'ERR_SNAPSHOT_UNSUPPORTED',
      `unsupported device-state record version ${version} (this fixedram reads ${kDeviceStateVersion})`,
      { offset: offset + 8 },
    );
  }
  const kind = kKinds[b.readUInt32LE(12)];
  if (!kind) {
    throw snapshotError('ERR_SNAPSHOT_UNSUPPORTED', `unsupported device-state kind ${b.readUInt32LE(12)}`, {
      offset: offset + 12,
    });
  }
  const recordBytes = b.readBigUInt64LE(16);
  if (recordBytes !== BigInt(b.length))
    throw bad(`it says ${recordBytes} bytes, the file holds ${b.length} from its offset`, 16);
  const count = b.readUInt32LE(24);
  if (count < 1 || count > kMaxParts) throw bad(`${count} parts (1 to ${kMaxParts})`, 24);
  if (b.readUInt32LE(28) !== 0 || b.subarray(40, 64).some((x) => x !== 0)) throw bad('reserved bytes are not zero', 28);
  const tableEnd = kDeviceStateHeaderBytes + count * kPartEntryBytes;
  if (tableEnd > b.length) throw bad('the part table runs past the end of the file', kDeviceStateHeaderBytes);
  const parts: { type: number; bytes: number; at: number }[] = [];
  let data = tableEnd;
  for (let i = 0; i < count; i++) {
    const e = kDeviceStateHeaderBytes + i * kPartEntryBytes;
    const type = b.readUInt32LE(e);
    if (b.readUInt32LE(e + 4) !== 0) throw bad(`part ${i}: reserved bytes are not zero`, e + 4);
    const len = b.readBigUInt64LE(e + 8);
    if (len > BigInt(b.length - data)) throw bad(`part ${i} (${len} bytes) runs past the end of the record`, e + 8);
    if (parts.some((p) => p.type === type)) throw bad(`part type ${type} appears twice`, e);
    parts.push({ type, bytes: Number(len), at: data });
    data += Number(len);
  }
  if (data !== b.length) throw bad(`${b.length - data} bytes after the last part`, data);
  checkPartBounds(parts, (m) => bad(m));
  const stored = b.readBigUInt64LE(32);
  const copy = Buffer.from(b);
  copy.fill(0, 32, 40);
  const checksumOk = hash64(copy) === stored;

  const get = (type: number): Buffer | undefined => {
    const p = parts.find((x) => x.type === type);
    return p ? b.subarray(p.at, p.at + p.bytes) : undefined;
  };
  const allowed =
    kind === 'qemu-mapped-ram'
      ? [kPartOrigin, kPartQemuHead, kPartQemuRamSection, kPartQemuTail, kPartLibvirt]
      : [kPartOrigin, kPartQemuStream, kPartLibvirt];
  const required =
    kind === 'qemu-mapped-ram'
      ? [kPartOrigin, kPartQemuHead, kPartQemuRamSection, kPartQemuTail]
      : [kPartOrigin, kPartQemuStream];
  for (const p of parts) {
    if (!allowed.includes(p.type)) {
      throw snapshotError(
        'ERR_SNAPSHOT_UNSUPPORTED',
        `unsupported device-state part type ${p.type} in a ${kind} record`,
        { offset: offset + p.at },
      );
    }
  }
  for (const t of required) if (!get(t)) throw bad(`a ${kind} record needs part type ${t}`);

  const originBytes = get(kPartOrigin)!;
  let origin: DeviceStateOrigin;
  try {
    origin = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(originBytes)) as DeviceStateOrigin;
  } catch {
    throw bad('the origin is not UTF-8 JSON');
  }
  if (typeof origin !== 'object' || origin === null || Array.isArray(origin) || typeof origin.source !== 'string') {
    throw bad('the origin is not a JSON object with a "source"');
  }
  const ds: DecodedDeviceState = {
    kind,
    origin,
    recordBytes: b.length,
    checksum: stored,
    checksumOk,
    streamBytes: 0,
  };
  if (kind === 'qemu-mapped-ram') {
    const rs = get(kPartQemuRamSection)!;
    if (rs.length !== kRamSectionPartBytes || rs.readUInt32LE(12) > 1) throw bad('malformed RAM section part');
    ds.head = get(kPartQemuHead)!;
    ds.tail = get(kPartQemuTail)!;
    ds.ramSection = {
      sectionId: rs.readUInt32LE(0),
      instanceId: rs.readUInt32LE(4),
      version: rs.readUInt32LE(8),
      footers: rs.readUInt32LE(12) === 1,
    };
    ds.streamBytes = ds.head.length + ds.tail.length;
  } else {
    ds.stream = get(kPartQemuStream)!;
    ds.streamBytes = ds.stream.length;
  }
  const lv = get(kPartLibvirt);
  if (lv) ds.libvirt = lv;
  return ds;
}

/**
 * Where the record goes: after every other region (`end`), on a 4 KiB boundary. Returns the
 * record's offset and the new file size.
 */
export function placeDeviceState(end: number, recordBytes: number): { offset: number; fileSize: number } {
  const offset = Math.ceil(end / kDeviceStateAlign) * kDeviceStateAlign;
  return { offset, fileSize: offset + recordBytes };
}

/**
 * Checks the record's place as stored in a header: 4 KiB-aligned, after every other region (`end`),
 * its size within the bound. `declaredSize` is the header's fileSize (the record runs to it).
 */
export function checkDeviceStatePlace(offset: number, end: number, declaredSize: number): void {
  const bad = (m: string): Error =>
    snapshotError('ERR_SNAPSHOT_INVALID', `corrupt header: device-state record ${m}`, { offset: 48 });
  if (offset % kDeviceStateAlign !== 0)
    throw bad(`offset 0x${offset.toString(16)} is not a multiple of ${kDeviceStateAlign}`);
  if (offset < end)
    throw bad(`at 0x${offset.toString(16)} overlaps the regions before it (they end at 0x${end.toString(16)})`);
  if (offset + kDeviceStateHeaderBytes > declaredSize)
    throw bad(`at 0x${offset.toString(16)} does not fit before the declared size 0x${declaredSize.toString(16)}`);
  if (declaredSize - offset > kMaxDeviceStateBytes)
    throw bad(`is ${declaredSize - offset} bytes (at most ${kMaxDeviceStateBytes})`);
}

/** A short description for inspect and logs. */
export function describeDeviceState(ds: DecodedDeviceState): Record<string, unknown> {
  return {
    kind: ds.kind,
    bytes: ds.recordBytes,
    streamBytes: ds.streamBytes,
    checksum: `0x${ds.checksum.toString(16).padStart(16, '0')}`,
    checksumOk: ds.checksumOk,
    origin: ds.origin,
    ...(ds.libvirt ? { libvirtBytes: ds.libvirt.length } : {}),
  };
}
