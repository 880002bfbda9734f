#!/usr/bin/env bash
# tests/fuzz/smoke.sh [SECONDS]: every fuzz target for SECONDS (default 20) each, as CI runs them.
# Exits 77 (skipped) when the fuzzing toolchain is missing, else non-zero when any target crashed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
status=0
for corpus in "$HERE"/corpus/*/; do
  target=$(basename "$corpus")
  "$HERE/run.sh" "$target" "${1:-20}"
  rc=$?
  if [ $rc -eq 77 ]; then exit 77; fi
  if [ $rc -ne 0 ]; then status=1; fi
done
exit $status
