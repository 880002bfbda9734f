#!/usr/bin/env bash
# A rank SIGKILLed mid-training: the job must not hang. The other ranks exit non-zero within the
# collective timeout, and the output names the rank that died.
set -u
WORKER="$1"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
source "$(dirname "$0")/mpi_job_lib.sh"
TIMEOUT_S=20

start_job "$WORKER" $TIMEOUT_S
victim=$(rank_pid 1) || exit 1
kill -9 "$victim"
killed_at=$(date +%s)
wait_job $((TIMEOUT_S + 30)); rc=$?
elapsed=$(( $(date +%s) - killed_at ))
survivors=$(pgrep -f "$TMP/run" | wc -l)
echo "mpirun exit code $rc, ${elapsed}s after SIGKILL of rank 1 (pid $victim), survivors: $survivors"
grep -E "rank 1|gone" "$TMP/out" | head -3
fail=0
[[ $rc -ne 0 ]] || { echo "FAIL: exit code 0"; fail=1; }
[[ $survivors -eq 0 ]] || { echo "FAIL: $survivors rank(s) still alive"; fail=1; }
# Named either by mpirun ("process rank 1 ... exited on signal 9") when it ends the job first, or by
# a surviving rank's collective timeout ("rank 1 (pid N) is gone").
grep -qE "process rank 1 .*signal 9|rank 1 \(pid $victim\) is gone" "$TMP/out" ||
  { echo "FAIL: output does not name rank 1"; tail -20 "$TMP/out"; fail=1; }
[[ $fail -eq 0 ]] && echo "1 passed, 0 failed"
exit $fail
