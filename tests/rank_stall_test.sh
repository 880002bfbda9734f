#!/usr/bin/env bash
# A rank that stops answering without dying (SIGSTOP: a hung node, a debugger, a swapped-out VM).
# mpirun sees no exit, so the job's own collective timeout must act: the other ranks fail within
# comm.timeout_s with an error naming the stalled rank, and the job ends non-zero.
set -u
WORKER="$1"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d); trap 'pkill -9 -f "$TMP/run" 2>/dev/null; rm -rf "$TMP"' EXIT
TIMEOUT_S=5
mpirun --oversubscribe --bind-to none -np 3 "$WORKER" --data.train_limit 3000 --data.test_limit 500 \
  --train.epochs 1000 --threads 1 --train.progress_every_s 0.2 --comm.timeout_s $TIMEOUT_S \
  --checkpoint.enabled false --run_dir "$TMP/run" > "$TMP/out" 2>&1 &
MPIRUN_PID=$!
for _ in $(seq 1 300); do grep -q "samples/s" "$TMP/out" && break; sleep 0.1; done
victim=""
for pid in $(pgrep -f "$TMP/run"); do
  tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$pid
done
[[ -n $victim ]] || { echo "FAIL: no rank 1 process"; exit 1; }
kill -STOP "$victim"
stopped_at=$(date +%s)
for _ in $(seq 1 $(((TIMEOUT_S + 30) * 10))); do kill -0 $MPIRUN_PID 2>/dev/null || break; sleep 0.1; done
if kill -0 $MPIRUN_PID 2>/dev/null; then echo "FAIL: job still running $((TIMEOUT_S + 30)) s after the stall"; exit 1; fi
wait $MPIRUN_PID; rc=$?
elapsed=$(( $(date +%s) - stopped_at ))
grep "did not complete within" "$TMP/out" | head -2
fail=0
[[ $rc -ne 0 ]] || { echo "FAIL: exit code 0"; fail=1; }
grep -q "rank 1 (pid $victim) is stopped" "$TMP/out" || { echo "FAIL: the stalled rank is not named"; tail -5 "$TMP/out"; fail=1; }
[[ $fail -eq 0 ]] && echo "job ended ${elapsed}s after rank 1 stalled (timeout ${TIMEOUT_S}s), exit $rc" && echo "1 passed, 0 failed"
exit $fail
