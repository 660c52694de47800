#!/usr/bin/env bash
# The long fuzz run for fixedram's snapshot parser and `verify` (issue 3).
#
# What it does: builds the deterministic base snapshots of test/support/fuzz-driver.ts, then, until
# the time budget is spent, runs fast-check properties over random mutations of them (bit flips,
# truncations, appended bytes, overwritten bytes, header and block-table fields set to extreme
# values with the checksums recomputed, and hostile headers with VALID checksums: geometry fields
# (lengths up to 2^50, page sizes up to 1 GiB, offsets moved by gaps up to 2^49) rewritten, the file
# grown sparsely to match, every metadata checksum and the header checksum recomputed, so every
# structural check passes and only the bounded page walk stands between the case and a hang or a
# huge allocation; work files live on /dev/shm) with a new seed each round, and checks the oracle:
#   - verify ends in exit 0, 1 or 3 (a result or a typed FixedramError), never anything else;
#   - a raw mutation that changes the file is detected (exit 1 or 3);
#   - inspect ends in a result or exit 3; no case takes longer than 10 s (a hostile case: plus the
#     documented cost of hashing its tables, 9 bytes per page at 200 MB/s).
# Every counterexample is shrunk by fast-check and written to the corpus directory as
# found-<base>-<seed>.json (no `expect`: fix the bug, then promote it, see the corpus README).
# The default `npm test` replays the stored corpus (test/fuzz-corpus.test.ts) and runs the same
# properties with a fixed seed (test/hostile.test.ts); this script is the longer, random run.
#
# Usage:  scripts/fuzz.sh [SECONDS] [SEED]
#   SECONDS  time budget (default 600)
#   SEED     first seed (default: from the clock; printed, so a run can be repeated)
#   FIXEDRAM_FUZZ_OUT   where found cases go (default test/fixtures/fuzz-corpus)
#   FIXEDRAM_FUZZ_RUNS  cases per base and round (default 2000)
# Exit status: 0 when no case failed, 1 when some did (they are in the corpus directory), 2 on a
# driver error. Each case runs verify in this process with one channel (about 20-50 ms each).
#
# Examples:
#   scripts/fuzz.sh 3600                       # an hour
#   scripts/fuzz.sh 60 12345                   # repeat a minute with a known seed
#   node dist/test/support/fuzz-driver.js --base mixed --runs 500 --seed 1    # one round, one base
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
seed=${2:-$(( $(date +%s) % 2147483647 ))}
out=${FIXEDRAM_FUZZ_OUT:-test/fixtures/fuzz-corpus}
runs=${FIXEDRAM_FUZZ_RUNS:-2000}
npx tsc -p tsconfig.json
echo "fuzz: ${seconds} s, first seed ${seed}, ${runs} cases per base and round, found cases -> ${out}" >&2
exec node dist/test/support/fuzz-driver.js --seconds "$seconds" --seed "$seed" --runs "$runs" --out "$out"
