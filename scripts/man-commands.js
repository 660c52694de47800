#!/usr/bin/env node
// Prints the [COMMANDS] section of the man page (help2man include format) from the program
// itself: each command's usage, description, arguments and options as `--help` shows them.
'use strict';
const path = require('node:path');
const { makeProgram, commandsOf } = require(path.join(__dirname, '..', 'dist', 'src', 'cli'));

const roff = (s) => s.replace(/\\/g, '\\e').replace(/-/g, '\\-').replace(/^([.'])/, '\\&$1');
const program = makeProgram({ stdout: process.stdout, stderr: process.stderr, setExitCode: () => undefined });
const out = ['[COMMANDS]'];
for (const { name, cmd } of commandsOf(program)) {
  const help = cmd.createHelp();
  out.push(`.SS "fixedram ${name} ${help.commandUsage(cmd).split(' ').slice(1 + name.split(' ').length).join(' ')}"`);
  out.push(roff(cmd.description()));
  for (const a of help.visibleArguments(cmd)) {
    out.push('.TP', `\\fI${roff(help.argumentTerm(a))}\\fR`, roff(help.argumentDescription(a)));
  }
  for (const o of help.visibleOptions(cmd)) {
    const [flags, value] = [o.flags.replace(/ <.*>$/, ''), /<.*>$/.exec(o.flags)?.[0]];
    out.push('.TP', `\\fB${roff(flags)}\\fR${value ? ` \\fI${roff(value)}\\fR` : ''}`, roff(help.optionDescription(o)));
  }
}
process.stdout.write(`${out.join('\n')}\n`);
