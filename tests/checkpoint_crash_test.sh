#!/usr/bin/env bash
# Crash safety: a writer SIGKILLed at 50 moments spread over its saves. After every kill the store
# opens, `allround-ckpt verify` passes on every checkpoint, and the run's latest is a complete one
# (its tensors hold the values of one single save).
set -u
WRITER="$1" CKPT="$2"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
DB="$TMP/db"
fail=0
for i in $(seq 1 50); do
  "$WRITER" "$DB" > "$TMP/out" 2>&1 &
  pid=$!
  # Once the writer is saving (its start-up loads LibTorch), kill it 0 to 392 ms later: a fixed
  # sequence of moments spread over several saves, so no luck is involved in which are tried.
  for _ in $(seq 1 200); do [[ -s "$TMP/out" ]] && break; sleep 0.02; done
  sleep "$(awk -v i="$i" 'BEGIN { printf "%.3f", ((i * 37) % 50) * 0.008 }')"
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  if ! "$CKPT" verify "$DB" > "$TMP/verify" 2>&1; then
    echo "FAIL after kill $i: verify"; cat "$TMP/verify"; fail=1; break
  fi
done
# The store still takes writes (orphaned chunks were cleaned up on open), and latest is complete.
"$WRITER" "$DB" 1 > /dev/null || { echo "FAIL: store no longer writable"; fail=1; }
"$CKPT" verify "$DB" | tail -1
n=$("$CKPT" ls "$DB" | tail -n +2 | wc -l)
[[ $n -ge 1 ]] || { echo "FAIL: no checkpoint survived"; fail=1; }
latest=$("$CKPT" ls "$DB" | tail -1 | awk '{print $1}')
"$CKPT" show "$DB" "$latest" | grep -q "^tensors (3)" || { echo "FAIL: latest $latest incomplete"; fail=1; }
[[ $fail -eq 0 ]] && echo "50 kills: store consistent, $n checkpoints, latest $latest" && echo "1 passed, 0 failed"
exit $fail
