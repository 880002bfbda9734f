# Shared by the rank-failure tests: start a long 3-rank training job under mpirun, wait until it
# trains, find one rank's process, and wait for the job to end. Source it; it sets TMP, MPIRUN_PID.

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'pkill -9 -f "$TMP/run" 2>/dev/null; rm -rf "$TMP"' EXIT

# start_job WORKER TIMEOUT_S: 3 ranks, output in $TMP/out; returns once progress lines appear.
start_job() {
  mpirun --oversubscribe --bind-to none -np 3 "$1" --data.train_limit 3000 --data.test_limit 500 \
    --train.epochs 1000 --threads 1 --train.progress_every_s 0.2 --comm.timeout_s "$2" \
    --checkpoint.enabled false --run_dir "$TMP/run" > "$TMP/out" 2>&1 &
  MPIRUN_PID=$!
  for _ in $(seq 1 1200); do grep -q "samples/s" "$TMP/out" && return 0; sleep 0.1; done
  echo "FAIL: training never started"; cat "$TMP/out"; exit 1
}

# rank_pid R: the pid of rank R's process.
rank_pid() {
  local pid
  for pid in $(pgrep -f "$TMP/run"); do
    if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then echo "$pid"; return 0; fi
  done
  echo "FAIL: no rank $1 process" >&2; exit 1
}

# wait_job LIMIT_S: waits for mpirun to end; fails the test if it is still running after LIMIT_S.
wait_job() {
  for _ in $(seq 1 $(($1 * 10))); do kill -0 $MPIRUN_PID 2>/dev/null || break; sleep 0.1; done
  if kill -0 $MPIRUN_PID 2>/dev/null; then echo "FAIL: job still running $1 s later"; exit 1; fi
  wait $MPIRUN_PID
}
