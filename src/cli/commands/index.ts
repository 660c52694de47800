/**
 * The table of CLI commands, in `--help` order. To add a command: write `commands/NAME.ts`
 * exporting a CliCommand (see ../command.ts) and add one line here.
 */
import type { CliCommand } from '../command';
import convert from './convert';
import exportCommand from './export';
import inspect from './inspect';
import load from './load';
import pull from './pull';
import push from './push';
import save from './save';
import verify from './verify';
import vmRestore from './vm-restore';
import vmSave from './vm-save';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const kCommands: CliCommand<any, any, any>[] = [
  save,
  load,
  verify,
  inspect,
  convert,
  exportCommand,
  vmSave,
  vmRestore,
  push,
  pull,
];
