#!/usr/bin/env node
'use strict';
const argv = process.argv.slice(2);
// save --update: its channel threads start now, while the CLI loads (see src/cli/early.ts)
const team = require('../dist/src/cli/early.js').earlyChannels(argv);
require('../dist/src/cli/program.js')
  .main(argv, team)
  .catch((err) => {
    process.stderr.write(`fixedram: internal error: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 4;
  });
