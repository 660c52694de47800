#!/usr/bin/env bash
# Scenario: snapshot two RAM blocks, inspect the snapshot, restore it, and prove the restore exact.
#
# Makes its own blocks in /dev/shm (tmpfs, like a VM's memory-backend-file with share=on):
#   mem0  64 MiB: stamped pages, zero pages, and never-written holes
#   vram  16 MiB: mostly holes
# then runs save -> inspect -> verify -> load into fresh AND pre-dirtied targets -> cmp.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/fixedram.js
[ -f dist/src/cli/index.js ] || npm run build >/dev/null

base=${FIXEDRAM_EXAMPLE_DIR:-/dev/shm}
[ -d "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/fixedram-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== making RAM blocks in $work"
node -e '
const fs = require("fs");
const [dir] = process.argv.slice(1);
const mk = (name, pages, kind) => {
  const fd = fs.openSync(`${dir}/${name}`, "w");
  fs.ftruncateSync(fd, pages * 4096);
  const page = Buffer.alloc(4096);
  for (let i = 0; i < pages; i++) {
    const k = kind(i);
    if (k === "hole") continue;
    page.fill(k === "zero" ? 0 : (i * 31) & 0xff);
    if (k === "data") page.write(`${name} page ${i}`, 0);
    fs.writeSync(fd, page, 0, 4096, i * 4096);
  }
  fs.closeSync(fd);
};
mk("mem0", 16384, (i) => (i % 3 === 2 ? "zero" : i >= 12288 ? "hole" : "data"));
mk("vram", 4096, (i) => (i < 64 ? "data" : "hole"));
' "$work"

echo "== save"
$bin save -o "$work/vm.fxr" -b "mem0=$work/mem0" -b "vram=$work/vram" -j 2 --progress none
echo "== inspect"
$bin inspect "$work/vm.fxr"
echo "== verify (checksums, and against the live blocks)"
$bin verify "$work/vm.fxr" --against "mem0=$work/mem0" --against "vram=$work/vram" --progress none
echo "== load into fresh targets"
$bin load "$work/vm.fxr" --dir "$work/restored" --progress none
echo "== load into dirty targets (pre-filled with 0xAA: zero pages must come back as zeros)"
head -c $((16384 * 4096)) /dev/zero | tr '\0' '\252' > "$work/dirty-mem0"
$bin load "$work/vm.fxr" -b "mem0=$work/dirty-mem0" --progress none
echo "== compare"
cmp "$work/mem0" "$work/restored/mem0"
cmp "$work/vram" "$work/restored/vram"
cmp "$work/mem0" "$work/dirty-mem0"
echo "quickstart: all restored blocks are byte-identical to the originals"

# Try:
#   ./bin/fixedram.js inspect --json FILE        machine-readable layout
#   ./bin/fixedram.js verify FILE --json         one JSON result, exit 1 on a bad page
#   ./bin/fixedram.js save --help                every option, and the exit statuses
