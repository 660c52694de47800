/**
 * fixedram's library API: the typed core that the CLI maps its flags onto. It does not load the
 * CLI (commander): `require('fixedram')` gives the functions below and nothing else.
 */
export { save, type SaveOptions, type SaveResult } from './save';
export { update, type UpdateOptions, type UpdateResult } from './update';
// channel threads started ahead of an update (UpdateOptions.team), so their start-up overlaps the caller's
export { prestartChannels, type ChannelTeam } from './channels/pool';
export { load, type LoadOptions, type LoadResult } from './load';
export { verify, type VerifyOptions, type VerifyResult, type VerifyFailure } from './verify';
export { inspect, type InspectResult } from './inspect';
export { convert, type ConvertOptions, type ConvertResult } from './convert';
export { type DeviceState, type DeviceStateOrigin, type DecodedDeviceState, type QemuRamSection } from './devstate';
export { snapshotDeviceState } from './snapshot';
export { exportSnapshot, type ExportOptions, type ExportResult, type ExportFormat } from './export';
export { vmSave, type VmSaveOptions, type VmSaveResult, type VmThen } from './vm/save';
export { vmRestore, type VmRestoreOptions, type VmRestoreResult } from './vm/restore';
export { QmpClient, QmpError, type QmpEvent, type QmpOptions } from './qmp';
export { parseBlockArg, type BlockArg } from './block-args';
export { encodeBlockName, decodeBlockName } from './block-names';
export { ExitCode, FixedramError, exitCodeOf, type ErrorRecord } from './errors';
export type { ProgressEvent, ProgressSink } from './progress';
