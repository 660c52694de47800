#!/usr/bin/env bash
# Regenerates what is made from `--help`: the man page man/fixedram.1 (help2man, from the
# program's help, each command's help and man/fixedram.h2m) and the shell completions in
# completion/. test/package.test.ts fails when they are not current. Needs a build (npm run build).
#   scripts/gen-docs.sh [OUTDIR]   (default: the repository; the test writes to a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
mkdir -p "$out/man" "$out/completion"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# help2man names the program after the executable it runs
printf '#!/bin/sh\nexec node %q "$@"\n' "$PWD/bin/fixedram.js" > "$tmp/fixedram"
chmod +x "$tmp/fixedram"
fx="$tmp/fixedram"
{
  cat man/fixedram.h2m
  node scripts/man-commands.js
} > "$tmp/include.h2m"
help2man --no-info --no-discard-stderr --include "$tmp/include.h2m" \
  --name 'save and restore RAM block files into one fixed-offset snapshot' --output "$out/man/fixedram.1" "$fx"
"$fx" completion bash > "$out/completion/fixedram.bash"
"$fx" completion zsh > "$out/completion/_fixedram"
