/** fixedram's library API: the typed core that the CLI maps its flags onto. */
export { save, type SaveOptions, type SaveResult } from './save';
export { update, type UpdateOptions, type UpdateResult } from './update';
export { load, type LoadOptions, type LoadResult } from './load';
export { verify, type VerifyOptions, type VerifyResult, type VerifyFailure } from './verify';
export { inspect, type InspectResult } from './inspect';
export { convert, type ConvertOptions, type ConvertResult } from './convert';
export { encodeBlockName, decodeBlockName, parseBlockArg, type BlockArg } from './blocks';
export { ExitCode, FixedramError, exitCodeOf } from './errors';
export { runCli, makeProgram, main } from './cli';
