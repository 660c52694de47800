/** The CLI (the bin's business; the library face in ../index.ts does not load it). */
export { main, runCli, makeProgram, commandsOf, kExitHelp, type ProgramIo } from './program';
export { errorLine, errorEnvelope, resultEnvelope, kSchemaVersion, StderrLines } from './output';
export { kCommands } from './commands';
export type { CliCommand, CoreContext } from './command';
