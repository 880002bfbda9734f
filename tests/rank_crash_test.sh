#!/usr/bin/env bash
# A rank SIGKILLed mid-training: the job must not hang. The other ranks exit non-zero within the
# collective timeout, and the output names the rank that died.
set -u
WORKER="$1"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d); trap 'rm -rf "$TMP"; [[ -n ${MPIRUN_PID:-} ]] && kill -9 $MPIRUN_PID 2>/dev/null' EXIT
TIMEOUT_S=20

mpirun --oversubscribe --bind-to none -np 3 "$WORKER" --data.train_limit 3000 --data.test_limit 500 \
  --train.epochs 1000 --threads 1 --train.progress_every_s 0.2 --comm.timeout_s $TIMEOUT_S \
  --run_dir "$TMP/run" > "$TMP/out" 2>&1 &
MPIRUN_PID=$!

# Wait until training is under way (rank 0's progress lines), then kill rank 1.
for _ in $(seq 1 300); do grep -q "samples/s" "$TMP/out" && break; sleep 0.1; done
grep -q "samples/s" "$TMP/out" || { echo "FAIL: training never started"; cat "$TMP/out"; exit 1; }
victim=""
for pid in $(pgrep -f "$TMP/run"); do
  if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$pid; fi
done
[[ -n $victim ]] || { echo "FAIL: no rank 1 process found"; exit 1; }
kill -9 "$victim"
killed_at=$(date +%s)

# mpirun (and with it every rank) must be gone within the timeout plus a margin.
for _ in $(seq 1 $(((TIMEOUT_S + 30) * 10))); do kill -0 $MPIRUN_PID 2>/dev/null || break; sleep 0.1; done
if kill -0 $MPIRUN_PID 2>/dev/null; then echo "FAIL: job still running $((TIMEOUT_S + 30)) s after the kill"; exit 1; fi
wait $MPIRUN_PID; rc=$?; MPIRUN_PID=""
elapsed=$(( $(date +%s) - killed_at ))
survivors=$(pgrep -f "$TMP/run" | wc -l)
echo "mpirun exit code $rc, ${elapsed}s after SIGKILL of rank 1 (pid $victim), survivors: $survivors"
grep -E "rank 1|gone" "$TMP/out" | head -3
fail=0
[[ $rc -ne 0 ]] || { echo "FAIL: exit code 0"; fail=1; }
[[ $survivors -eq 0 ]] || { echo "FAIL: $survivors rank(s) still alive"; fail=1; }
# Named either by mpirun ("process rank 1 ... exited on signal 9") when it ends the job first, or by
# a surviving rank's collective timeout ("gone: rank 1 (pid N)").
grep -qE "process rank 1 .*signal 9|gone: rank 1 \(pid $victim\)" "$TMP/out" ||
  { echo "FAIL: output does not name rank 1"; tail -20 "$TMP/out"; fail=1; }
[[ $fail -eq 0 ]] && echo "1 passed, 0 failed"
exit $fail
