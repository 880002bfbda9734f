#!/usr/bin/env bash
# Exact resume: a 6-epoch run SIGKILLed after its 3rd checkpoint and resumed with --resume auto
# ends bit-for-bit equal (max abs difference 0 over every parameter, buffer and optimizer slot) to
# a run that never stopped. Usage: resume_test.sh WORKER CKPT OPTIMIZER RANKS [steps]
# With "steps", checkpoints come every 20 steps, so the kill and the resume fall mid-epoch. Further
# arguments are job flags (e.g. another learning mode).
set -u
WORKER="$1" CKPT="$2" OPT="$3" RANKS="$4" PERIOD="${5:-rounds}"
shift 5 2>/dev/null || shift $#
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
LAUNCH=()
[[ $RANKS -gt 1 ]] && LAUNCH=(mpirun --oversubscribe --bind-to none -np "$RANKS")
LR=0.05; [[ $OPT == adam ]] && LR=0.002
ARGS=(--data.train_limit 6000 --data.test_limit 500 --train.epochs 6 --threads 1 --train.progress_every_s 0
      --optimizer.name "$OPT" --optimizer.lr $LR --data.augment flip_crop --checkpoint.keep_last 100)
[[ $PERIOD == steps ]] && ARGS+=(--checkpoint.every_steps 20 --checkpoint.every_rounds 0)
ARGS+=("$@")

"${LAUNCH[@]}" "$WORKER" "${ARGS[@]}" --run_dir "$TMP/straight" > /dev/null 2> "$TMP/straight.err" ||
  { echo "FAIL: uninterrupted run"; cat "$TMP/straight.err"; exit 1; }

"${LAUNCH[@]}" "$WORKER" "${ARGS[@]}" --run_dir "$TMP/killed" > /dev/null 2> "$TMP/killed.err" &
pid=$!
for _ in $(seq 1 3600); do  # up to 3 minutes on a loaded machine
  [[ $(grep -c "checkpoint .* saved" "$TMP/killed.err") -ge 3 ]] && break
  sleep 0.05
done
# SIGKILL the whole process group of the run: the worker (or mpirun and every rank).
pkill -9 -f "$TMP/killed" ; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
saved=$(grep -c "checkpoint .* saved" "$TMP/killed.err")
last=$(grep "checkpoint .* saved" "$TMP/killed.err" | tail -1)
[[ $saved -ge 3 && $last != *"round 6"* ]] || { echo "FAIL: killed after $saved checkpoints, the last: $last"; exit 1; }

"${LAUNCH[@]}" "$WORKER" "${ARGS[@]}" --run_dir "$TMP/killed" --resume auto > /dev/null 2> "$TMP/resumed.err" ||
  { echo "FAIL: resumed run"; cat "$TMP/resumed.err"; exit 1; }
grep "resumed from" "$TMP/resumed.err" || { echo "FAIL: did not resume"; exit 1; }

a=$("$CKPT" ls "$TMP/straight/checkpoints" | tail -1 | awk '{print $1}')
b=$("$CKPT" ls "$TMP/killed/checkpoints" | tail -1 | awk '{print $1}')
"$CKPT" diff "$TMP/straight/checkpoints" "$a" "$b" --db-b "$TMP/killed/checkpoints" > "$TMP/diff.txt" ||
  { echo "FAIL: checkpoints not comparable"; cat "$TMP/diff.txt"; exit 1; }
tail -1 "$TMP/diff.txt"
grep -q "^max_abs_diff=0 " "$TMP/diff.txt" || { echo "FAIL: resumed run differs"; grep -v " 0$" "$TMP/diff.txt"; exit 1; }
# The comparison covers the optimizer's state, not only the weights.
grep -qE "^optim/.*(momentum_buffer|exp_avg_sq)" "$TMP/diff.txt" || { echo "FAIL: no optimizer state compared"; exit 1; }
"$CKPT" verify "$TMP/killed/checkpoints" | tail -1
echo "killed after: $last"
echo "$OPT ranks=$RANKS: killed after $saved checkpoints, resumed run equals the uninterrupted one"
echo "1 passed, 0 failed"
