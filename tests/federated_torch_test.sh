#!/usr/bin/env bash
# FedAvg over gRPC against FedAvg in plain PyTorch from the same start: the coordinator takes its
# first global model from a PyTorch state dict (model.init) and 3 sites, hosted by one worker
# process, take their examples from a file (partition.scheme file) of different sizes. Each site
# trains full-batch for 3 local epochs, so the order of examples plays no part; every global model
# of 3 rounds must equal fedavg_torch_check.py's replay in PyTorch to 1e-4.
set -u
COORD="$1" WORKER="$2"
DATA=/usr/share/datasets/fashion-mnist
PY="${ALLROUND_VENV:-/opt/allround-venv}/bin/python3"
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
TMP=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/models"
PORT=$((20000 + ($$ * 19) % 20000))
"$PY" "$(dirname "$0")/fedavg_torch_check.py" prepare "$TMP" 1200 3 || exit 1
JOB=(--data.train_limit 1200 --data.test_limit 500 --data.scale unit --threads 1 --model.name simple_cnn
     --model.init "$TMP/init.safetensors" --partition.scheme file --partition.file "$TMP/partition.txt"
     --partition.sites 3 --optimizer.name sgd --optimizer.lr 0.1 --optimizer.momentum 0.9
     --optimizer.weight_decay 1e-5 --schedule.name constant --train.batch_size 1200 --federated.rounds 3
     --federated.local_epochs 3 --federated.min_sites 3 --federated.min_available 3
     --federated.site_eval_fraction 0 --train.progress_every_s 0 --checkpoint.enabled false)
"$COORD" "${JOB[@]}" --listen 127.0.0.1:$PORT --no-auth --insecure --dump-models "$TMP/models" \
  --run_dir "$TMP/run" > "$TMP/coord.out" 2> "$TMP/coord.err" &
coord=$!
"$WORKER" "${JOB[@]}" --coordinator 127.0.0.1:$PORT --insecure --site s --site-index 0-2 \
  > /dev/null 2> "$TMP/sites.err" &
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }
timeout 300 tail --pid=$coord -f /dev/null; wait $coord; rc=$?
cat "$TMP/coord.out"
[[ $rc -eq 0 ]] || { tail -5 "$TMP/coord.err" "$TMP/sites.err"; }
check "coordinator finished 3 rounds" '[[ $rc -eq 0 ]] && grep -q "^round 3/3" "$TMP/coord.out"'
check "the sites hold the file's examples" \
  '[[ $(grep -c "training examples, by label" "$TMP/sites.err") -eq 3 ]] &&
   [[ $(sed -n "s/.*: \([0-9]*\) training examples.*/\1/p" "$TMP/sites.err" | awk "{s += \$1} END {print s}") -eq 1200 ]]'
check "every global model equals FedAvg in PyTorch from the same start" \
  '"$PY" "$(dirname "$0")/fedavg_torch_check.py" check "$TMP" 3 3 0.1'
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
