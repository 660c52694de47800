/**
 * The table of CLI commands, in `--help` order: the words that name each command and how to load
 * its module. To add a command: write `NAME.ts` exporting a CliCommand (see ../command.ts) and add
 * one line here. A run loads only the module of the command it runs (see commandFor): loading all
 * of them costs a CLI start-up milliseconds that a `save --update` counts.
 */
import type { CliCommand } from '../command';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a table of commands of different option types
type AnyCommand = CliCommand<any, any, any>;
const load = (load: () => { default: AnyCommand }) => (): AnyCommand => load().default;

export const kCommandTable: readonly (readonly [name: string, load: () => AnyCommand])[] = [
  ['save', load(() => require('./save') as typeof import('./save'))],
  ['load', load(() => require('./load') as typeof import('./load'))],
  ['verify', load(() => require('./verify') as typeof import('./verify'))],
  ['inspect', load(() => require('./inspect') as typeof import('./inspect'))],
  ['convert', load(() => require('./convert') as typeof import('./convert'))],
  ['export', load(() => require('./export') as typeof import('./export'))],
  ['vm save', load(() => require('./vm-save') as typeof import('./vm-save'))],
  ['vm restore', load(() => require('./vm-restore') as typeof import('./vm-restore'))],
  ['push', load(() => require('./push') as typeof import('./push'))],
  ['pull', load(() => require('./pull') as typeof import('./pull'))],
];

/** The command the first words of argv name ('save', 'vm save'), loaded alone; undefined for none. */
export function commandFor(argv: readonly string[]): AnyCommand | undefined {
  const named = (words: number): string => argv.slice(0, words).join(' ');
  const hit = kCommandTable.find(
    ([name]) => argv.length >= name.split(' ').length && name === named(name.split(' ').length),
  );
  return hit?.[1]();
}
