#!/usr/bin/env bash
# Federated runs on loopback that go wrong on purpose, one scenario per ctest:
#   tls           TLS with deploy/make-certs.sh: a site with the CA trains; a site without the CA,
#                 one with another CA, and one with a wrong token are refused.
#   site_killed   a site SIGKILLed mid-round: the round closes at its deadline with the other two;
#                 the restarted site takes part in the next round.
#   resume        the coordinator SIGKILLed just after its round-2 checkpoint (round 3 may or may
#                 not have closed and been saved by then) and restarted with --resume auto:
#                 the sites carry on, and the final model equals an uninterrupted run's, bit for bit.
#                 Then the same with SIGTERM (a systemd stop) after round 2 and no periodic
#                 checkpoints: the coordinator checkpoints the rounds closed so far and exits 0.
#   many_sites    one worker process hosts 8 sites (--site-index 0-7 on 2 training threads) beside
#                 a single-site process and a site with its own IDX files (--data DIR); every
#                 round aggregates all 10.
#   join_order    12 sites, 3 sampled a round, joining in two different orders (so with different
#                 ids): both runs sample the same sites by name and end with the same model, bit for bit.
#   mpi_site      an mpirun group of 2 ranks is one site beside two single-process sites.
#   fixmatch      the semi-supervised mode at 3 sites (each with the labels that fall in its share).
#   vae           the VAE at 3 sites: rounds average the network; the coordinator reports the test
#                 ELBO, the sites their own splits' negative ELBO (federated_loss).
#   gan           the GAN at 3 sites: rounds average both networks; the coordinator reports the
#                 Frechet distance of the global generator's images.
#   mlm           masked-LM on the fortunes at 3 sites: rounds average encoder and head; every
#                 process trains the same tokenizer from the same corpus, fixed for the run.
#   dino          DINO at 3 sites: each round averages student, teacher and center; sites evaluate
#                 by k-NN on their own share, the coordinator by k-NN and linear probe.
# Usage: federated_robustness_test.sh SCENARIO COORDINATOR WORKER MAKE_CERTS
set -u
SCENARIO="$1" COORD="$2" WORKER="$3" MAKE_CERTS="$4"
DATA=/usr/share/datasets/fashion-mnist
PY="${ALLROUND_VENV:-/opt/allround-venv}/bin/python3"
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
TMP=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; [[ -n ${KEEP_TMP:-} ]] && echo "kept $TMP" || rm -rf "$TMP"' EXIT
PORT=$((20000 + ($$ * 17 + ${#SCENARIO} * 101) % 20000))
ADDR=127.0.0.1:$PORT
JOB=(--data.train_limit 3000 --data.test_limit 500 --threads 1 --partition.scheme dirichlet --partition.beta 0.5
     --train.progress_every_s 0)
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }
finish() { echo "$passed passed, $failed failed"; [[ $failed -eq 0 ]]; exit $?; }
# wait_for FILE PATTERN SECONDS: until FILE holds a line matching PATTERN.
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1"; cat "$1"; return 1
}
# wait_done PID SECONDS: the process's exit status, or 124 after SECONDS.
wait_done() {
  timeout "$2" tail --pid="$1" -f /dev/null || { kill -9 "$1"; wait "$1" 2>/dev/null; return 124; }
  wait "$1"
}
# site NAME INDEX ARGS...: a site process in the background; its stderr in $TMP/site-NAME.err.
# A command in the array LAUNCH, when set, runs the worker (it must exec it, so $! stays its pid).
LAUNCH=()
site() {
  local name=$1 index=$2
  shift 2
  "${LAUNCH[@]}" "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site "$name" --site-index "$index" "$@" \
    > /dev/null 2>> "$TMP/site-$name.err" &
}
# three_sites: a coordinator dumping each global model and 3 sites dumping their updates, with the
# job flags in EXTRA: 2 rounds of 1 local epoch at 3 IID sites, each evaluating a tenth of its share,
# no checkpoints; waits for the coordinator, whose exit status is then in $rc.
three_sites() {
  EXTRA=(--federated.rounds 2 --federated.local_epochs 1 --federated.site_eval_fraction 0.1
         --partition.sites 3 --partition.scheme iid --federated.min_sites 3 --federated.min_available 3
         --checkpoint.enabled false "${EXTRA[@]}")
  mkdir -p "$TMP/models" "$TMP/updates"
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/run" \
    --dump-models "$TMP/models" > "$TMP/coord.out" 2> "$TMP/coord.err" &
  local coord=$! s
  for s in 0 1 2; do site "s$s" $s --insecure --dump-updates "$TMP/updates"; done
  wait_done $coord 300; rc=$?
  cat "$TMP/coord.out"; [[ $rc -eq 0 ]] || cat "$TMP/coord.err" "$TMP"/site-*.err
}

case "$SCENARIO" in
tls)
  command -v openssl > /dev/null || { echo "no openssl: skipped"; exit 77; }
  bash "$MAKE_CERTS" "$TMP/certs" > /dev/null && bash "$MAKE_CERTS" "$TMP/other" > /dev/null || exit 1
  EXTRA=(--federated.rounds 1 --partition.sites 1 --federated.min_sites 1 --checkpoint.enabled false)
  printf 'a tokA\n' > "$TMP/tokens"; chmod 600 "$TMP/tokens"
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR 2> "$TMP/notls.err"
  rc=$?
  check "without --tls-cert or --insecure the coordinator refuses to start, saying what to give" \
    '[[ $rc -ne 0 ]] && grep -q "give --tls-cert FILE --tls-key FILE" "$TMP/notls.err"'
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --tokens "$TMP/tokens" --tls-cert "$TMP/certs/server.pem" \
    --tls-key "$TMP/certs/server.pem" 2> "$TMP/notkey.err"
  rc=$?
  check "a certificate given as the key is refused, naming the flag" \
    '[[ $rc -ne 0 ]] && grep -q "error: --tls-key .*: no PEM private key in it" "$TMP/notkey.err"'
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --tokens "$TMP/tokens" --tls-cert "$TMP/certs/server.pem" \
    --tls-key "$TMP/other/server.key" 2> "$TMP/otherkey.err"
  rc=$?
  check "a key that is not the certificate's is named as a cause when the server cannot start" \
    '[[ $rc -ne 0 ]] && grep -q "or --tls-key is not the private key of --tls-cert.s certificate" "$TMP/otherkey.err"'
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --tokens "$TMP/tokens" --tls-cert "$TMP/certs/server.pem" \
    --tls-key "$TMP/certs/server.key" --run_dir "$TMP/run" > "$TMP/coord.out" 2> "$TMP/coord.err" &
  coord=$!
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site a --token tokA 2> "$TMP/noca.err"
  rc=$?
  check "a site with neither --tls-ca nor --insecure is told to give one" \
    '[[ $rc -ne 0 ]] && grep -q "give --tls-ca FILE" "$TMP/noca.err"'
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site a --token tokA --insecure --give-up-s 3 \
    2> "$TMP/plain.err"
  rc=$?
  check "a plain-text site is refused by the TLS coordinator" '[[ $rc -ne 0 ]] && grep -q "error:" "$TMP/plain.err"'
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site a --token tokA --tls-ca "$TMP/other/ca.pem" \
    --give-up-s 3 2> "$TMP/otherca.err"
  rc=$?
  check "a site trusting another CA is refused" '[[ $rc -ne 0 ]] && grep -q "error:" "$TMP/otherca.err"'
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site a --token wrong --tls-ca "$TMP/certs/ca.pem" \
    2> "$TMP/badtoken.err"
  rc=$?
  check "a site over TLS with a wrong token is refused with a clear error" \
    '[[ $rc -ne 0 ]] && grep -q "site .a.: unknown site or bad token" "$TMP/badtoken.err"'
  check "none of the refused sites ever joined" '! grep -q "joined as" "$TMP/coord.err"'
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --site a --token tokA --tls-ca "$TMP/certs/ca.pem" \
    2> "$TMP/good.err"
  rc=$?
  check "the site with the CA and its token trains the round over TLS" \
    '[[ $rc -eq 0 ]] && grep -q "round 0 update accepted" "$TMP/good.err"'
  wait_done $coord 60; rc=$?
  check "the coordinator finished the round" '[[ $rc -eq 0 ]] && grep -q "^round 1/1" "$TMP/coord.out"'
  check "the refusals are counted in the summary" \
    '"$PY" -c "import json,sys; r=json.load(open(sys.argv[1]))[\"refusals\"]; sys.exit(0 if r.get(\"bad_token\",0)>=1 else 1)" "$TMP/run/summary.json"'
  ;;

site_killed)
  EXTRA=(--federated.rounds 3 --partition.sites 3 --federated.min_sites 2 --federated.min_available 3
         --federated.round_timeout_s 8 --federated.site_timeout_s 60 --checkpoint.enabled false)
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/run" \
    > "$TMP/coord.out" 2> "$TMP/coord.err" &
  coord=$!
  site a 0 --insecure; site b 1 --insecure
  # Site c must die before it submits round 1, however fast its training and however late this
  # script gets to run: it dumps each update before submitting it, through a temporary file named
  # after its pid, and that name for round 1 is a FIFO with no reader, made before the worker
  # starts (exec keeps the pid). So c blocks there, after training, and round 1 never gets its
  # update (before this, a loaded machine now and then let c submit before the kill).
  mkdir -p "$TMP/c-updates"
  LAUNCH=(bash -c 'mkfifo "$1/round-1-site-c.safetensors.tmp.$$" && shift && exec "$@"' _ "$TMP/c-updates")
  site c 2 --insecure --dump-updates "$TMP/c-updates"
  victim=$!
  LAUNCH=()
  wait_for "$TMP/site-c.err" "round 1: training" 60 && kill -9 $victim
  echo "site c killed in round 1"
  check "site c never submitted in round 1" '! grep -q "round 1 update" "$TMP/site-c.err"'
  wait_for "$TMP/coord.out" "^round 2/3" 60
  check "round 1 closed at its deadline with the two live sites" \
    'grep "^round 2/3" "$TMP/coord.out" | grep -q "(2 sites, .*closed at the deadline)"'
  site c 2 --insecure
  wait_done $coord 120; rc=$?
  cat "$TMP/coord.out"
  check "the coordinator finished all 3 rounds" '[[ $rc -eq 0 ]] && grep -q "^round 3/3" "$TMP/coord.out"'
  check "the restarted site took part in the next round" \
    'grep "^round 3/3" "$TMP/coord.out" | grep -q "(3 sites" && grep -q "round 2 update accepted" "$TMP/site-c.err"'
  check "site c rejoined under its old id" \
    '[[ $(grep -c "site .c. joined" "$TMP/coord.err") -eq 2 && $(grep -o "site .c. joined as [0-9]*" "$TMP/coord.err" | sort -u | wc -l) -eq 1 ]]'
  ;;

resume)
  EXTRA=(--federated.rounds 4 --partition.sites 3 --federated.min_sites 3 --federated.min_available 3
         --checkpoint.every_rounds 1 --federated.local_epochs 4)
  # run_one NAME [KILL_AFTER_ROUND [SIGNAL]]: a whole federated run; sites started one by one, so their
  # ids are the same in every run too (the aggregate does not depend on them: see join_order).
  # With SIGNAL TERM, the run has no periodic checkpoints: only the stop saves one.
  run_one() {
    local name=$1 kill_after=${2:-0} sig=${3:-KILL} s i=0 more=()
    [[ $sig == TERM ]] && more=(--checkpoint.every_rounds 100)
    mkdir -p "$TMP/$name/models"
    "$COORD" "${JOB[@]}" "${EXTRA[@]}" "${more[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/$name/run" \
      --dump-models "$TMP/$name/models" --resume auto > "$TMP/$name/coord.out" 2> "$TMP/$name/coord.err" &
    local coord=$!
    for s in a b c; do
      "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --insecure --site $s --site-index $i \
        > /dev/null 2> "$TMP/$name/site-$s.err" &
      wait_for "$TMP/$name/coord.err" "site .$s. joined" 60 || return 1
      i=$((i + 1))
    done
    if [[ $kill_after -gt 0 && $sig == KILL ]]; then
      wait_for "$TMP/$name/coord.err" "checkpoint .* saved (round $kill_after)" 120 || return 1
      kill -9 $coord; wait $coord 2>/dev/null
      echo "coordinator killed after round $kill_after"
    elif [[ $kill_after -gt 0 ]]; then
      wait_for "$TMP/$name/coord.out" "^round $kill_after/4" 120 || return 1
      kill -TERM $coord; wait_done $coord 30; stop_rc=$?
      echo "coordinator sent SIGTERM after round $kill_after: exit status $stop_rc"
    fi
    if [[ $kill_after -gt 0 ]]; then
      "$COORD" "${JOB[@]}" "${EXTRA[@]}" "${more[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/$name/run" \
        --dump-models "$TMP/$name/models" --resume auto >> "$TMP/$name/coord.out" 2> "$TMP/$name/coord2.err" &
      coord=$!
    fi
    wait_done $coord 180 || return 1
    wait  # the sites
  }
  mkdir -p "$TMP/whole" "$TMP/killed"
  run_one whole; rc=$?
  check "the uninterrupted run finished" '[[ $rc -eq 0 ]] && grep -q "^round 4/4" "$TMP/whole/coord.out"'
  run_one killed 2; rc=$?
  cat "$TMP/killed/coord.out"
  check "the restarted coordinator resumed from its checkpoint" \
    'grep -q "resumed from checkpoint .* ([23] rounds done)" "$TMP/killed/coord2.err"'
  check "it finished the run" '[[ $rc -eq 0 ]] && grep -q "^round 4/4" "$TMP/killed/coord.out"'
  check "the sites survived the restart and were told to stop" \
    '[[ $(grep -l "coordinator says stop" "$TMP"/killed/site-*.err | wc -l) -eq 3 ]]'
  check "the final model equals the uninterrupted run's, bit for bit" \
    'cmp "$TMP/whole/models/version-4.safetensors" "$TMP/killed/models/version-4.safetensors"'
  mkdir -p "$TMP/stopped"
  stop_rc=
  run_one stopped 2 TERM; rc=$?
  cat "$TMP/stopped/coord.out"
  done_at=$(sed -n 's/.*stopped by signal after \([0-9]*\) of 4 rounds; its state is checkpointed.*/\1/p' \
    "$TMP/stopped/coord.err")
  check "SIGTERM: the coordinator exits 0, checkpointing the rounds closed so far" \
    '[[ $stop_rc == 0 && $done_at =~ ^[23]$ ]] && grep -q "checkpoint .* saved (round $done_at)" "$TMP/stopped/coord.err"'
  check "the restarted coordinator resumed from that checkpoint" \
    'grep -q "resumed from checkpoint .* ($done_at rounds done)" "$TMP/stopped/coord2.err"'
  check "it finished the run, the sites with it" \
    '[[ $rc -eq 0 ]] && grep -q "^round 4/4" "$TMP/stopped/coord.out" &&
     [[ $(grep -l "coordinator says stop" "$TMP"/stopped/site-*.err | wc -l) -eq 3 ]]'
  check "no site gave up or failed across the stop" '! grep -q "allround-worker.*: error: " "$TMP"/stopped/site-*.err'
  check "the final model equals the uninterrupted run's, bit for bit" \
    'cmp "$TMP/whole/models/version-4.safetensors" "$TMP/stopped/models/version-4.safetensors"'
  ;;

many_sites)
  EXTRA=(--federated.rounds 2 --partition.sites 9 --federated.min_sites 10 --federated.min_available 10
         --checkpoint.enabled false)
  for i in $(seq 0 7); do echo "sim-$i tok$i"; done > "$TMP/tokens"
  printf 'solo tok8\nown tok9\n' >> "$TMP/tokens"; chmod 600 "$TMP/tokens"
  # A tenth site with its own IDX files (--data DIR): 400 training and 100 test images cut from
  # the end of the Fashion-MNIST files, uncompressed.
  mkdir -p "$TMP/own"
  python3 - "$DATA" "$TMP/own" <<"PY" || exit 1
import gzip, struct, sys
src, dst = sys.argv[1:]
for base, n in (("train", 400), ("t10k", 100)):
    for kind, item in (("images-idx3", 784), ("labels-idx1", 1)):
        raw = gzip.open(f"{src}/{base}-{kind}-ubyte.gz").read()
        dims = raw[3]
        total = struct.unpack(">I", raw[4:8])[0]
        header = raw[:4] + struct.pack(">I", n) + raw[8:4 + 4 * dims]
        body = raw[4 + 4 * dims:]
        open(f"{dst}/{base}-{kind}-ubyte", "wb").write(header + body[(total - n) * item:])
PY
  mkdir -p "$TMP/models" "$TMP/updates"
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --tokens "$TMP/tokens" --insecure --run_dir "$TMP/run" \
    --dump-models "$TMP/models" > "$TMP/coord.out" 2> "$TMP/coord.err" &
  coord=$!
  "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --insecure --site sim --site-index 0-7 \
    --tokens "$TMP/tokens" --site-threads 2 --dump-updates "$TMP/updates" > /dev/null 2> "$TMP/many.err" &
  many=$!
  site solo 8 --insecure --token tok8 --dump-updates "$TMP/updates"
  site own 0 --insecure --token tok9 --data "$TMP/own" --dump-updates "$TMP/updates"
  wait_done $coord 300; rc=$?
  cat "$TMP/coord.out"
  check "every round aggregated all 10 sites" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(10 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the site with its own files joined with its 400 training examples" \
    'grep -q "site .own. joined as [0-9]* (400 examples)" "$TMP/coord.err"'
  check "the 8 hosted sites joined under their own names" '[[ $(grep -c "site .sim-[0-7]. joined" "$TMP/coord.err") -eq 8 ]]'
  wait_done $many 30; rc=$?
  check "the hosting process exited cleanly after STOP" '[[ $rc -eq 0 ]]'
  check "federated evaluation was reported" 'grep -q "federated_accuracy" "$TMP/coord.out"'
  check "each global model is the example-weighted mean of the 10 updates" \
    '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 2 10'
  ;;

join_order)
  EXTRA=(--federated.rounds 3 --partition.sites 12 --federated.fraction 0.25 --federated.min_sites 3
         --federated.min_available 12 --checkpoint.enabled false)
  # run_order NAME FIRST SECOND: one process hosts the sites FIRST and joins them; once all six
  # have joined, a second process hosts SECOND. So the ids 1-6 go to FIRST's sites.
  run_order() {
    local name=$1 first=$2 second=$3 i
    mkdir -p "$TMP/$name/models"
    "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/$name/run" \
      --dump-models "$TMP/$name/models" > "$TMP/$name/coord.out" 2> "$TMP/$name/coord.err" &
    local coord=$!
    "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --insecure --site sim --site-index "$first" \
      --site-threads 2 > /dev/null 2> "$TMP/$name/first.err" &
    for ((i = 0; i < 600; i++)); do
      [[ $(grep -c "joined as" "$TMP/$name/coord.err") -ge 6 ]] && break
      sleep 0.1
    done
    "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --insecure --site sim --site-index "$second" \
      --site-threads 2 > /dev/null 2> "$TMP/$name/second.err" &
    wait_done $coord 240 || return 1
    wait
  }
  # Each round's sampled sites, by name, one line per round.
  sampled() { "$PY" -c 'import json, sys
for line in open(sys.argv[1]): print(" ".join(json.loads(line)["site_names"]))' "$TMP/$1/run/metrics.jsonl"; }
  run_order forward 0-5 6-11; rc1=$?
  run_order backward 6-11 0-5; rc2=$?
  cat "$TMP/forward/coord.out"
  echo "sampled, forward:"; sampled forward
  echo "sampled, backward:"; sampled backward
  check "both runs finished 3 rounds of 3 sites" \
    '[[ $rc1 -eq 0 && $rc2 -eq 0 && $(grep -c "(3 sites" "$TMP/forward/coord.out") -eq 3 &&
       $(grep -c "(3 sites" "$TMP/backward/coord.out") -eq 3 ]]'
  id_of() { sed -n "s/.*site .$2. joined as \([0-9]*\) .*/\1/p" "$TMP/$1/coord.err"; }
  check "the sites joined in the two orders (sim-0's id was 1-6, then 7-12)" \
    '[[ $(id_of forward sim-0) -le 6 && $(id_of backward sim-0) -ge 7 ]]'
  check "each round sampled the same sites by name" \
    '[[ -n $(sampled forward) && "$(sampled forward)" == "$(sampled backward)" ]]'
  check "the final models are equal, bit for bit" \
    'cmp "$TMP/forward/models/version-3.safetensors" "$TMP/backward/models/version-3.safetensors"'
  ;;

mpi_site)
  command -v mpirun > /dev/null || { echo "no mpirun: skipped"; exit 77; }
  EXTRA=(--federated.rounds 2 --partition.sites 3 --federated.min_sites 3 --federated.min_available 3
         --checkpoint.enabled false)
  mkdir -p "$TMP/updates"
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/run" \
    > "$TMP/coord.out" 2> "$TMP/coord.err" &
  coord=$!
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  mpirun -np 2 --oversubscribe --bind-to none "$WORKER" "${JOB[@]}" "${EXTRA[@]}" --coordinator $ADDR --insecure \
    --site group --site-index 0 --dump-updates "$TMP/updates" > /dev/null 2> "$TMP/site-group.err" &
  group=$!
  site b 1 --insecure; site c 2 --insecure
  wait_done $coord 300; rc=$?
  cat "$TMP/coord.out"
  check "every round aggregated the group and the two single sites" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  wait_done $group 60; rc=$?
  check "both ranks of the group stopped cleanly" '[[ $rc -eq 0 ]] && grep -q "site group: info: coordinator says stop" "$TMP/site-group.err"'
  check "the group submitted one update per round" \
    '[[ $(ls "$TMP"/updates/round-*-site-group.safetensors | wc -l) -eq 2 ]]'
  ;;
fixmatch)
  # FixMatch at 3 sites: 10 labels per class over the whole set, each site keeps the ones in its
  # share; every round averages the model; the optimizer state stays at the site (reset per round).
  EXTRA=(--mode fixmatch --data.labels_per_class 10 --semi.mu 2 --train.batch_size 32 --federated.rounds 2
         --federated.local_epochs 4 --optimizer.lr 0.03
         --partition.sites 3 --partition.scheme iid --federated.min_sites 3 --federated.min_available 3
         --checkpoint.enabled false)
  "$COORD" "${JOB[@]}" "${EXTRA[@]}" --listen $ADDR --no-auth --insecure --run_dir "$TMP/run" \
    > "$TMP/coord.out" 2> "$TMP/coord.err" &
  coord=$!
  site a 0 --insecure; site b 1 --insecure; site c 2 --insecure
  wait_done $coord 300; rc=$?
  cat "$TMP/coord.out"
  check "FixMatch sites trained and every round aggregated all 3" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the global model learned from the few labels" \
    '"$PY" -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))[\"test_accuracy\"] > 0.2 else 1)" "$TMP/run/summary.json"'
  ;;
dino)
  # DINO at 3 sites, 2 rounds of 1 local epoch: a round averages everything under model/ (student,
  # teacher and its batch-norm statistics, center); the optimizer starts afresh at each site.
  EXTRA=(--mode dino --model.name simple_cnn --dino.local_crops 2 --dino.out_dim 256 --dino.knn_bank 1000
         --dino.probe_steps 100 --optimizer.name adamw --optimizer.lr 5e-4 --train.batch_size 32)
  three_sites
  check "DINO sites trained and every round aggregated all 3" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the coordinator evaluated by k-NN and linear probe, the sites by k-NN on their shares" \
    'grep -q "linear_accuracy 0\.[0-9]" "$TMP/coord.out" && grep -q "federated_accuracy(v1) 0\.[0-9]" "$TMP/coord.out"'
  check "each global model (student, teacher, center) is the example-weighted mean of the 3 updates" \
    '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 2 3'
  check "the update carries the teacher and the center" \
    '"$PY" -c "
import sys
sys.path.insert(0, sys.argv[2])
from safetensors_np import load_file
m = load_file(sys.argv[1])
assert \"model/center\" in m and abs(m[\"model/center\"]).sum() > 0, sorted(m)[:5]
assert any(k.startswith(\"model/teacher/backbone.\") for k in m)
assert any(k.startswith(\"model/student/head.\") for k in m)
" "$TMP/models/version-2.safetensors" "$(dirname "$0")"'
  ;;
vae)
  EXTRA=(--mode vae --vae.hidden 64 --optimizer.name adam --optimizer.lr 1e-3 --train.batch_size 64)
  three_sites
  check "VAE sites trained and every round aggregated all 3" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the coordinator reported the test ELBO and the sites their negative ELBO" \
    'grep -q "elbo -[0-9]" "$TMP/coord.out" && grep -q "federated_loss(v1) [0-9]" "$TMP/coord.out"'
  check "the test ELBO improved from round 1 to round 2" \
    '"$PY" -c "
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
assert r[1][\"elbo\"] > r[0][\"elbo\"], (r[0][\"elbo\"], r[1][\"elbo\"])
" "$TMP/run/metrics.jsonl"'
  check "each global model is the example-weighted mean of the 3 updates" \
    '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 2 3'
  ;;
gan)
  EXTRA=(--mode gan --gan.width 16 --gan.eval_samples 500 --gan.classifier_epochs 1 --optimizer.name adam
         --optimizer.lr 2e-4 --optimizer.beta1 0.5 --train.batch_size 64)
  three_sites
  check "GAN sites trained and every round aggregated all 3" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the coordinator reported the Frechet distance and the smallest class share" \
    'grep -q "fd [0-9]" "$TMP/coord.out" && grep -q "min_class_frac 0\.[0-9]" "$TMP/coord.out"'
  check "each global model (generator and discriminator) is the example-weighted mean of the 3 updates" \
    '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 2 3'
  ;;
mlm)
  [[ -d /usr/share/games/fortunes ]] || { echo "no fortunes: skipped"; exit 77; }
  EXTRA=(--mode mlm --data.name text --data.dir /usr/share/games/fortunes --data.augment none
         --text.vocab_size 600 --text.seq_len 32 --mlm.hidden 32 --data.train_limit 900 --data.test_limit 200
         --optimizer.name adamw --optimizer.lr 2e-3 --train.batch_size 32)
  three_sites
  check "MLM sites trained and every round aggregated all 3" \
    '[[ $rc -eq 0 ]] && [[ $(grep -c "(3 sites" "$TMP/coord.out") -eq 2 ]]'
  check "the coordinator reported held-out MLM and unigram figures, the sites their own" \
    'grep -q "mlm_accuracy 0\.[0-9]" "$TMP/coord.out" && grep -q "unigram_ppl [0-9]" "$TMP/coord.out" &&
     grep -q "federated_loss(v1) [0-9]" "$TMP/coord.out"'
  check "each global model is the example-weighted mean of the 3 updates" \
    '"$PY" "$(dirname "$0")/weighted_mean_check.py" "$TMP" 2 3'
  ;;
*) echo "unknown scenario $SCENARIO"; exit 2 ;;
esac
finish
