#!/usr/bin/env bash
# allround-worker trains SimpleCNN on a slice of the real Fashion-MNIST: the run directory gets
# job.yaml, one metrics line per epoch and summary.json; --summary-json writes the same figures;
# the model learns; and two runs with the same seed and threads are identical to the last digit.
set -euo pipefail
WORKER="$1"
DATA=/usr/share/datasets/fashion-mnist
[[ -d $DATA ]] || { echo "no $DATA (run deploy/setup.sh): skipped"; exit 77; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

run() {
  "$WORKER" "$ROOT/deploy/jobs/simple_cnn.yaml" --data.train_limit 6000 --data.test_limit 2000 \
    --train.epochs 2 --threads 1 --train.progress_every_s 0.01 --run_dir "$1" --summary-json "$1.json" "${@:2}"
}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
run "$TMP/a" > "$TMP/a.out" 2> "$TMP/a.err"
run "$TMP/b" > /dev/null 2>&1

grep -q "samples/s ETA" "$TMP/a.err" || { echo "FAIL: no progress line"; cat "$TMP/a.err"; exit 1; }
python3 - "$TMP" <<'PY'
import json, sys
t = sys.argv[1]
a = json.load(open(f"{t}/a.json")); b = json.load(open(f"{t}/b.json"))
inner = json.load(open(f"{t}/a/summary.json"))
lines = [json.loads(l) for l in open(f"{t}/a/metrics.jsonl")]
checks = {
    "two epochs recorded": a["epochs"] == 2 and len(lines) == 2 and [l["epoch"] for l in lines] == [1, 2],
    "learned (accuracy > 0.70, chance is 0.10)": a["test_accuracy"] > 0.70,
    "accuracy is a fraction of 2000 test examples": a["test_examples"] == 2000
        and abs(a["test_accuracy"] - sum(a["confusion_matrix"][i][i] for i in range(10)) / 2000) < 1e-12,
    "summary in run dir equals --summary-json": inner == a,
    "macro_f1 present and sane": 0 < a["macro_f1"] <= 1,
    "samples_per_s positive": a["samples_per_s"] > 0,
    "last metrics line is the summary's": lines[-1]["test_accuracy"] == a["test_accuracy"],
    "same seed, same result": a["test_loss"] == b["test_loss"] and a["confusion_matrix"] == b["confusion_matrix"],
}
bad = [k for k, ok in checks.items() if not ok]
for k, ok in checks.items(): print(("ok   " if ok else "FAIL ") + k)
print(f"accuracy {a['test_accuracy']:.4f} loss {a['test_loss']:.6f}")
sys.exit(1 if bad else 0)
PY
# The recorded job reproduces itself.
"$WORKER" "$TMP/a/job.yaml" --print-job > "$TMP/again.yaml"
diff "$TMP/a/job.yaml" "$TMP/again.yaml" && echo "ok   job.yaml round-trips"
