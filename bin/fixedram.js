#!/usr/bin/env node
'use strict';
require('../dist/src/cli/program.js').main().catch((err) => {
  process.stderr.write(`fixedram: internal error: ${err && err.stack ? err.stack : err}\n`);
  process.exitCode = 4;
});
