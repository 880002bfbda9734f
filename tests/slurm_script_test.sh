#!/usr/bin/env bash
# deploy/slurm/train.sbatch outside Slurm: a stand-in scontrol on PATH, 2 local ranks on the CPU.
# SIGTERM to the script (what Slurm's --signal=B:TERM@180 sends before the time limit) reaches
# the ranks through mpirun; they checkpoint after the same step, the script requeues the job and
# exits 0; the requeued start resumes from that checkpoint and ends equal to a run that never
# stopped.
set -u
WORKER="$(realpath "$1")" CKPT="$2"
SCRIPT="$(cd "$(dirname "$0")/.." && pwd)/deploy/slurm/train.sbatch"
JOB="$(cd "$(dirname "$0")/.." && pwd)/deploy/jobs/simple_cnn.yaml"
[[ -d /usr/share/datasets/fashion-mnist ]] || { echo "no Fashion-MNIST: skipped"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d); trap 'pkill -9 -f "$TMP/" 2>/dev/null; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin" "$TMP/straight" "$TMP/stopped"
printf '#!/bin/sh\necho "$*" >> "%s/scontrol.calls"\n' "$TMP" > "$TMP/bin/scontrol" && chmod +x "$TMP/bin/scontrol"
ARGS=(--data.train_limit 6000 --data.test_limit 500 --train.epochs 20 --train.progress_every_s 0.01
      --checkpoint.every_rounds 0 --checkpoint.keep_last 10)
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }
# The script as Slurm starts it: `env -C DIR "${SLURM[@]}" >> DIR/out 2>&1`, in DIR (the submit
# directory), output appended as with --open-mode=append. env execs bash, so in the background
# $! is the script's pid.
SLURM=(PATH="$TMP/bin:$PATH" SLURM_JOB_ID=4242 SLURM_CPUS_PER_TASK=1 ALLROUND_BIN="$(dirname "$WORKER")" DEVICE=cpu
       MPIRUN_ARGS="--oversubscribe -np 2" bash "$SCRIPT" "$JOB" "${ARGS[@]}")

env -C "$TMP/straight" "${SLURM[@]}" >> "$TMP/straight/out" 2>&1; rc=$?
check "an uninterrupted run ends 0 and is not requeued" '[[ $rc -eq 0 && ! -e $TMP/scontrol.calls ]]'

env -C "$TMP/stopped" "${SLURM[@]}" >> "$TMP/stopped/out" 2>&1 &
pid=$!
for _ in $(seq 1 6000); do grep -q "epoch 2/20 step" "$TMP/stopped/out" || ! kill -0 $pid 2>/dev/null && break; sleep 0.02; done
kill -TERM $pid
wait $pid; rc=$?
grep -v "step .*ETA" "$TMP/stopped/out" | tail -5
check "SIGTERM: the script exits 0" '[[ $rc -eq 0 ]]'
check "the ranks stopped after one step and checkpointed it, said once" \
  '[[ $(grep -c "stopped by signal after step" "$TMP/stopped/out") -eq 1 ]] && ! grep -q "final test" "$TMP/stopped/out"'
check "the job was requeued" '[[ $(cat "$TMP/scontrol.calls") == "requeue 4242" ]]'

env -C "$TMP/stopped" "${SLURM[@]}" >> "$TMP/stopped/out" 2>&1; rc=$?
check "the requeued start resumed from that checkpoint and finished" \
  '[[ $rc -eq 0 ]] && grep -q "resumed from checkpoint" "$TMP/stopped/out" && grep -q "final test" "$TMP/stopped/out"'
a=$("$CKPT" ls "$TMP/straight/runs/simple_cnn/checkpoints" | tail -1 | awk '{print $1}')
b=$("$CKPT" ls "$TMP/stopped/runs/simple_cnn/checkpoints" | tail -1 | awk '{print $1}')
check "it ended equal to the uninterrupted run" \
  '"$CKPT" diff "$TMP/straight/runs/simple_cnn/checkpoints" "$a" "$b" --db-b "$TMP/stopped/runs/simple_cnn/checkpoints" |
     grep -q "^max_abs_diff=0 "'
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
