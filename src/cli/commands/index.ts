/** Every CLI command, in `--help` order (the table and how to add a command: ./table.ts). */
import type { CliCommand } from '../command';
import { kCommandTable } from './table';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const kCommands: CliCommand<any, any, any>[] = kCommandTable.map(([, load]) => load());
