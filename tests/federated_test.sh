#!/usr/bin/env bash
# Federated averaging over gRPC on loopback: a coordinator and 3 site processes (Dirichlet
# non-IID partitions, so the sites hold different numbers of examples), 3 rounds. Every global
# model the coordinator produced equals, to float precision, the example-weighted mean of the
# updates the sites submitted in that round, computed here independently in Python; a site with
# a wrong token, and one training another model, are refused with a clear error.
# Extra arguments are job flags for every process (e.g. --strategy.name fedprox ...).
set -u
COORD="$1" WORKER="$2"
shift 2
DATA=/usr/share/datasets/fashion-mnist
PY="${ALLROUND_VENV:-/opt/allround-venv}/bin/python3"
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
TMP=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/models" "$TMP/updates"
printf 'a tokA\nb tokB\nc tokC\n' > "$TMP/tokens"; chmod 600 "$TMP/tokens"
PORT=$((20000 + ($$ * 13) % 20000))
JOB=(--data.train_limit 3000 --data.test_limit 500 --threads 1 --federated.rounds 3 --federated.min_sites 3
     --federated.min_available 3 --partition.scheme dirichlet --partition.sites 3 --partition.beta 0.5
     --train.progress_every_s 0 --checkpoint.enabled false "$@")
"$COORD" "${JOB[@]}" --listen 127.0.0.1:$PORT --tokens "$TMP/tokens" --insecure --dump-models "$TMP/models" \
  --run_dir "$TMP/run" --summary-json "$TMP/summary.json" > "$TMP/coord.out" 2> "$TMP/coord.err" &
coord=$!
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }

# Before the real sites start: the coordinator cannot finish without them, so this site meets a
# running coordinator (retrying until it listens) and not one that has already shut down.
"$WORKER" "${JOB[@]}" --coordinator 127.0.0.1:$PORT --insecure --site mallory --token guess --site-index 0 2> "$TMP/bad.err"
rc=$?
check "a site with a wrong token is refused with a clear error" \
  '[[ $rc -ne 0 ]] && grep -q "site .mallory.: unknown site or bad token" "$TMP/bad.err"'
"$WORKER" "${JOB[@]}" --coordinator 127.0.0.1:$PORT --insecure --site a --token tokA --site-index 0 \
  --model.name mlp 2> "$TMP/mlp.err"
rc=$?
check "a site training another model than the job's is refused at Join, naming the difference" \
  '[[ $rc -ne 0 ]] && grep -q "site .a. trains another model than the job.s: 6 tensors at the site" "$TMP/mlp.err"'
i=0
for site in a b c; do
  token=tok$(echo $site | tr a-c A-C)
  "$WORKER" "${JOB[@]}" --coordinator 127.0.0.1:$PORT --insecure --site $site --token $token --site-index $i \
    --dump-updates "$TMP/updates" > /dev/null 2> "$TMP/site-$site.err" &
  i=$((i + 1))
done

timeout 300 tail --pid=$coord -f /dev/null; wait $coord; rc=$?
cat "$TMP/coord.out"
check "coordinator finished 3 rounds" '[[ $rc -eq 0 ]] && grep -q "^round 3/3" "$TMP/coord.out"'
check "every site was told to stop and exited" '! grep -L "coordinator says stop" "$TMP"/site-*.err | grep -q .'
check "each global model is the example-weighted mean of its round's submitted updates" \
  '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 3 3 --non-iid'
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
