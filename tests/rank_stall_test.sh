#!/usr/bin/env bash
# A rank that stops answering without dying (SIGSTOP: a hung node, a debugger, a swapped-out VM).
# mpirun sees no exit, so the job's own collective timeout must act: the other ranks fail within
# comm.timeout_s with an error naming the stalled rank, and the job ends non-zero.
set -u
WORKER="$1"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
source "$(dirname "$0")/mpi_job_lib.sh"
TIMEOUT_S=5

start_job "$WORKER" $TIMEOUT_S
victim=$(rank_pid 1) || exit 1
kill -STOP "$victim"
stopped_at=$(date +%s)
wait_job $((TIMEOUT_S + 30)); rc=$?
elapsed=$(( $(date +%s) - stopped_at ))
grep "did not complete within" "$TMP/out" | head -2
fail=0
[[ $rc -ne 0 ]] || { echo "FAIL: exit code 0"; fail=1; }
grep -q "rank 1 (pid $victim) is stopped" "$TMP/out" || { echo "FAIL: the stalled rank is not named"; tail -5 "$TMP/out"; fail=1; }
[[ $fail -eq 0 ]] && echo "job ended ${elapsed}s after rank 1 stalled (timeout ${TIMEOUT_S}s), exit $rc" && echo "1 passed, 0 failed"
exit $fail
