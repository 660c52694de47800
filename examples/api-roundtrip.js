#!/usr/bin/env node
// Scenario: use fixedram as a library — save a block, refresh the snapshot in place after the
// "guest" changed a few pages, verify it against the live block, and load it back.
//
// The library API is the typed core the CLI maps its flags onto: save, update, load, verify,
// inspect (see dist/src/index.d.ts). Errors carry `code` (ENOENT, ERR_SNAPSHOT_TRUNCATED, ...) and
// exitCodeOf(err) gives the status the CLI would exit with.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { save, update, load, verify, inspect, exitCodeOf } = require('../dist/src/index.js');

async function main() {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'fixedram-api-'));
  try {
    const ram = path.join(dir, 'mem0');
    const pages = 4096; // 16 MiB
    const page = Buffer.alloc(4096);
    const fd = fs.openSync(ram, 'w');
    fs.ftruncateSync(fd, pages * 4096);
    for (let i = 0; i < pages; i += 2) {
      page.fill(i & 0xff).write(`page ${i}`, 0);
      fs.writeSync(fd, page, 0, 4096, i * 4096);
    }
    fs.closeSync(fd);

    const snap = path.join(dir, 'vm.fxr');
    const saved = await save({ output: snap, blocks: [{ name: 'mem0', path: ram }], channels: 2 });
    console.log(`saved: ${saved.presentPages} pages present, ${saved.zeroPages} zero`);

    // the guest writes to a few pages
    const w = fs.openSync(ram, 'r+');
    for (const i of [1, 100, 101, 4000]) fs.writeSync(w, Buffer.alloc(4096, 0x5a), 0, 4096, i * 4096);
    fs.closeSync(w);

    const u = await update({ output: snap, blocks: [{ name: 'mem0', path: ram }], channels: 2 });
    console.log(`update: ${u.pagesWritten} pages written, ${u.pagesUnchanged} unchanged`);

    const v = await verify({ snapshot: snap, against: [{ name: 'mem0', path: ram }] });
    console.log(`verify: ${v.ok ? 'OK' : `${v.failureCount} failures`}`);
    console.log(`inspect: ${JSON.stringify(inspect(snap).blocks[0])}`);

    const back = path.join(dir, 'restored');
    await load({ snapshot: snap, blocks: [{ name: 'mem0', path: back }] });
    console.log(`restored equals original: ${fs.readFileSync(back).equals(fs.readFileSync(ram))}`);

    await load({ snapshot: path.join(dir, 'missing.fxr'), dir }).catch((err) => {
      console.log(`a missing snapshot: ${err.code}, the CLI would exit ${exitCodeOf(err)}`);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

// Try:
//   node examples/api-roundtrip.js
//   change `channels` and watch the results stay identical
