#!/usr/bin/env bash
# Runs one libFuzzer target for $G3MOE_FUZZ_SECONDS seconds (default 60); the
# fuzz-<target> tests of a G3MOE_FUZZ build call it (scripts/fuzz.sh).
#
#   run-fuzzer.sh NAME FUZZER WORKDIR CORPUS...
#
# New coverage goes into WORKDIR/corpus/NAME, which later runs start from. An
# input that crashes (or leaks, hangs or runs out of memory) is copied into
# test/fuzz/regressions/NAME/, where the fuzz-replay-NAME test of every
# ordinary build replays it; it is also printed in base64 so that a CI log
# keeps it. Extra libFuzzer flags: the target's own ($G3MOE_FUZZ_TARGET_FLAGS,
# from CMake) and yours ($G3MOE_FUZZ_FLAGS).
set -uo pipefail
name=$1 fuzzer=$2 work=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
seconds=${G3MOE_FUZZ_SECONDS:-60}
corpus=$work/corpus/$name
crashes=$work/crashes/$name
log=$work/fuzz-$name.log
mkdir -p "$corpus" "$crashes"
rm -f "$crashes"/*

# One input may take a while under ASan (a large step seed), but not 30 s.
# shellcheck disable=SC2086
"$fuzzer" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$crashes/" ${G3MOE_FUZZ_TARGET_FLAGS:-} ${G3MOE_FUZZ_FLAGS:-} \
  "$corpus" "$@" >"$log" 2>&1
rc=$?
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
echo "fuzz-$name: $seconds s, ${runs:-?} inputs, corpus $(find "$corpus" -type f | wc -l) files, exit $rc (log $log)"
if ((rc == 0)); then
  exit 0
fi
tail -n 60 "$log"
kept=0
for f in "$crashes"/crash-* "$crashes"/leak-* "$crashes"/timeout-* "$crashes"/oom-*; do
  [[ -f $f ]] || continue
  mkdir -p "$here/regressions/$name"
  cp "$f" "$here/regressions/$name/"
  kept=1
  echo "fuzz-$name: kept $(basename "$f") in test/fuzz/regressions/$name/; base64:"
  base64 "$f" | head -c 65536
  echo
done
((kept)) || echo "fuzz-$name: the fuzzer failed without a crash input"
exit 1
