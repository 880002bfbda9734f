#!/usr/bin/env bash
# The README's federated command: installs every dependency, builds, makes a test CA and server
# certificate and a token per site, then runs deploy/jobs/federated_fmnist.yaml on loopback: one
# allround-coordinator and 4 allround-worker site processes, over TLS. Prints each round's
# accuracy (centralized on the test set, and federated on the sites' own held-out splits) and
# leaves the run, with its checkpoints, in runs/federated_fmnist. Extra arguments are job flags
# for every process (e.g. --federated.rounds 5 --strategy.name fedprox --strategy.proximal_mu 0.01).
# PORT (default 50051) picks the coordinator's port; JOB another job file (e.g.
# JOB=deploy/jobs/federated_secagg.yaml, the same federation under secure aggregation).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash deploy/setup.sh
bash deploy/build.sh
JOB=${JOB:-deploy/jobs/federated_fmnist.yaml}
RUN=runs/$(basename "$JOB" .yaml)
PORT=${PORT:-50051}
SITES=4
mkdir -p "$RUN"
bash deploy/make-certs.sh "$RUN/certs" localhost 127.0.0.1 > /dev/null
: > "$RUN/tokens"
chmod 600 "$RUN/tokens"
for i in $(seq 0 $((SITES - 1))); do echo "site-$i $(openssl rand -hex 16)" >> "$RUN/tokens"; done
pids=()
trap 'kill ${pids[@]+"${pids[@]}"} 2>/dev/null || true' EXIT
build/coordinator/allround-coordinator "$JOB" "$@" --listen 127.0.0.1:$PORT --tokens "$RUN/tokens" \
  --tls-cert "$RUN/certs/server.pem" --tls-key "$RUN/certs/server.key" --summary-json "$RUN/summary.json" \
  2> "$RUN/coordinator.log" &
coord=$!
for i in $(seq 0 $((SITES - 1))); do
  build/worker/allround-worker "$JOB" "$@" --coordinator 127.0.0.1:$PORT --tls-ca "$RUN/certs/ca.pem" \
    --site site-$i --site-index $i --tokens "$RUN/tokens" 2> "$RUN/site-$i.log" &
  pids+=($!)
done
start=$(date +%s)
wait $coord
echo "federated-demo: done in $(( $(date +%s) - start )) s; summary $RUN/summary.json, logs $RUN/*.log," \
     "checkpoints: build/storage/allround-ckpt ls $RUN/checkpoints"
wait "${pids[@]}"
