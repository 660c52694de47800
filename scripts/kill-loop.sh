#!/usr/bin/env bash
# kill-loop.sh: fault catalogue #7 at length — kills `fixedram save` with SIGKILL at N random points
# (default 100) and checks after every kill that the output is still the previous complete snapshot
# or the new complete one (`fixedram verify` exit 0, and byte-equal to one of the two), never a
# partial file. The short version (20 kills) runs in `npm test` (test/faults-atomicity.test.ts).
#
# Timing comes from the `--progress json` events on stderr: each round picks a random fraction of
# the total bytes, waits until a progress event reaches it (fractions >= 1 wait for the last event,
# i.e. kill during the commit), sleeps a random 0-99 ms more, and sends SIGKILL.
#
# Usage:  npm run build && scripts/kill-loop.sh [ROUNDS] [MIB]
#   ROUNDS  number of kills (default 100)
#   MIB     size of the source block in MiB (default 256; made in $FIXEDRAM_KILL_DIR or /dev/shm)
# Exit status: 0 when every round passed, 1 at the first round that found a bad output.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
mib=${2:-256}
base=${FIXEDRAM_KILL_DIR:-/dev/shm}
bin="node bin/fixedram.js"
[ -f dist/src/cli/index.js ] || { echo "build first: npm run build" >&2; exit 2; }
work=$(mktemp -d "$base/fixedram-kill-XXXXXX")
trap 'rm -rf "$work"' EXIT

# two generations of the source: random data with every 4th MiB left as a hole
for gen in 1 2; do
  f="$work/src$gen.ram"
  truncate -s "${mib}M" "$f"
  for ((m = 0; m < mib; m++)); do
    if ((m % 4 != 3)); then dd if=/dev/urandom of="$f" bs=1M seek=$m count=1 conv=notrunc status=none; fi
  done
done
out="$work/snap.fxr"
$bin save -o "$work/new.fxr" -b "mem=$work/src2.ram" --no-fsync >/dev/null
$bin save -o "$out" -b "mem=$work/src1.ram" --no-fsync >/dev/null
cp --sparse=always "$out" "$work/old.fxr"
old=$(sha1sum <"$work/old.fxr" | cut -d' ' -f1)
new=$(sha1sum <"$work/new.fxr" | cut -d' ' -f1)
total=$((mib * 1048576))
kept=0 replaced=0

for ((r = 1; r <= rounds; r++)); do
  frac=$((RANDOM % 110)) # percent; >= 100: after the last page
  target=$(((frac > 100 ? 100 : frac) * (total / 100)))
  err="$work/err"
  $bin save -o "$out" -b "mem=$work/src2.ram" --progress json -j 2 2>"$err" >/dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    done_bytes=$(grep -o '"bytesDone":[0-9]*' "$err" 2>/dev/null | tail -1 | cut -d: -f2 || true)
    if [ -n "${done_bytes:-}" ] && [ "$done_bytes" -ge "$target" ]; then break; fi
    sleep 0.005
  done
  sleep "0.0$((RANDOM % 10))$((RANDOM % 10))"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  h=$(sha1sum <"$out" | cut -d' ' -f1)
  if ! $bin verify "$out" -j 2 >/dev/null 2>"$work/verify.err"; then
    echo "round $r (${frac}%): verify failed:" >&2
    cat "$work/verify.err" >&2
    exit 1
  fi
  if [ "$h" = "$old" ]; then
    kept=$((kept + 1))
  elif [ "$h" = "$new" ]; then
    replaced=$((replaced + 1))
    cp --sparse=always "$work/old.fxr" "$out"
  else
    echo "round $r (${frac}%): the output is neither the old nor the new snapshot" >&2
    exit 1
  fi
  rm -f "$work"/.snap.fxr.*.tmp "$work/.snap.fxr.lock"
  printf '\rround %d/%d: old kept %d, new complete %d' "$r" "$rounds" "$kept" "$replaced"
done
echo
echo "ok: $rounds kills; the output was the old snapshot $kept times and the new one $replaced times, and always verified"
