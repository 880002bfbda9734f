#!/usr/bin/env bash
# SIGTERM (a scheduler's preemption) and SIGINT: the worker finishes its step, checkpoints, exits 0;
# --resume auto then continues from that step, and the run ends equal to one that never stopped.
set -u
WORKER="$1" CKPT="$2"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
ARGS=(--data.train_limit 6000 --data.test_limit 500 --train.epochs 4 --threads 1 --train.progress_every_s 0.01
      --checkpoint.every_rounds 0 --checkpoint.keep_last 10)
passed=0 failed=0
"$WORKER" "${ARGS[@]}" --run_dir "$TMP/straight" > /dev/null 2>&1 || { echo "FAIL: uninterrupted run"; exit 1; }
for sig in TERM INT; do
  "$WORKER" "${ARGS[@]}" --run_dir "$TMP/$sig" > /dev/null 2> "$TMP/$sig.err" &
  pid=$!
  # Signal it once epoch 2 trains. The wait is up to 2 minutes: a cap of a few seconds, which a
  # loaded machine's epoch 1 can outlast, would send the signal in epoch 1 instead.
  for _ in $(seq 1 6000); do grep -q "epoch 2/4 step" "$TMP/$sig.err" && break; sleep 0.02; done
  grep -q "epoch 2/4 step" "$TMP/$sig.err" || { echo "FAIL SIG$sig: epoch 2 never started"; tail -5 "$TMP/$sig.err"; exit 1; }
  kill -$sig $pid
  wait $pid; rc=$?
  line=$(grep "stopped by signal" "$TMP/$sig.err")
  if [[ $rc -eq 0 && -n $line ]] && grep -q "checkpoint simple_cnn/0000000001 saved (round 1, step" "$TMP/$sig.err"; then
    echo "ok   SIG$sig: exit 0, $line"; passed=$((passed+1))
  else
    echo "FAIL SIG$sig: rc=$rc"; cat "$TMP/$sig.err" | tail -5; failed=$((failed+1)); continue
  fi
  "$WORKER" "${ARGS[@]}" --run_dir "$TMP/$sig" --resume auto > /dev/null 2> "$TMP/$sig.resume.err"
  a=$("$CKPT" ls "$TMP/straight/checkpoints" | tail -1 | awk '{print $1}')
  b=$("$CKPT" ls "$TMP/$sig/checkpoints" | tail -1 | awk '{print $1}')
  if "$CKPT" diff "$TMP/straight/checkpoints" "$a" "$b" --db-b "$TMP/$sig/checkpoints" | grep -q "^max_abs_diff=0 "; then
    echo "ok   SIG$sig: resumed mid-epoch and ended equal to the uninterrupted run"; passed=$((passed+1))
  else
    echo "FAIL SIG$sig: resumed run differs"; failed=$((failed+1))
  fi
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
