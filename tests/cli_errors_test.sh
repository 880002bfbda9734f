#!/usr/bin/env bash
# Bad input to allround-worker and allround-coordinator: each case must print exactly one clear
# error line naming the culprit and exit non-zero. Runs the real binaries, as a user would.
set -u
WORKER="$1"
COORD="$2"
BIN="$WORKER"  # the binary expect runs
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
fail=0; passed=0

# expect NAME WANT_SUBSTRING -- ARGS...
expect() {
  local name="$1" want="$2"; shift 3
  local out rc
  out=$("$BIN" "$@" 2>&1 >/dev/null); rc=$?
  local lines; lines=$(printf '%s' "$out" | grep -c . || true)
  if [[ $rc -eq 0 ]]; then echo "FAIL $name: exit 0"; fail=$((fail+1)); return; fi
  if [[ "$out" != *"$want"* ]]; then echo "FAIL $name: '$out' lacks '$want'"; fail=$((fail+1)); return; fi
  if [[ $lines -ne 1 ]]; then echo "FAIL $name: $lines lines: $out"; fail=$((fail+1)); return; fi
  echo "ok   $name: $out"; passed=$((passed+1))
}

# A small valid data directory: 20 train and 10 test images, uncompressed.
mkdir -p "$TMP/data"
python3 - "$TMP/data" <<'PY'
import struct, sys, os
d = sys.argv[1]
def idx(path, dims, data):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", x) for x in dims) + bytes(data))
for split, n in (("train", 20), ("t10k", 10)):
    idx(f"{d}/{split}-images-idx3-ubyte", [n, 28, 28], [(i * 13) % 256 for i in range(n * 784)])
    idx(f"{d}/{split}-labels-idx1-ubyte", [n], [i % 10 for i in range(n)])
PY
cp -r "$TMP/data" "$TMP/corrupt"
cp -r "$TMP/data" "$TMP/mixed"  # test images of another size than the training ones
python3 -c 'import struct, sys; open(sys.argv[1], "wb").write(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 14, 14) + bytes(10 * 196))' \
  "$TMP/mixed/t10k-images-idx3-ubyte"
head -c 3000 "$TMP/data/train-images-idx3-ubyte" > "$TMP/corrupt/train-images-idx3-ubyte"
printf 'model: {name: simple_cnn}\ntrain: {epochs: 1, batch_sizee: 4}\n' > "$TMP/badkey.yaml"
printf 'model: {name: simple_cnn\n' > "$TMP/badyaml.yaml"
printf 'train: {epochs: 1}\nmodel: {name: mlp}\ntrain: {batch_size: 4}\n' > "$TMP/twice.yaml"
: > "$TMP/a-file"

expect missing_data_dir   "data directory '$TMP/nope' does not exist" -- --data.dir "$TMP/nope"
expect corrupt_idx        "$TMP/corrupt/train-images-idx3-ubyte': truncated" -- --data.dir "$TMP/corrupt"
expect mixed_sizes        "training images are [28, 28], test images [14, 14]" -- --data.dir "$TMP/mixed"
mkdir -p "$TMP/onedoc"; printf 'one short document\n' > "$TMP/onedoc/a.txt"
expect text_too_short     "has 1 documents; holding out 0 (text.test_fraction 0.1) leaves 1 training and 0 evaluation rows" \
  -- --mode mlm --data.name text --data.dir "$TMP/onedoc"
expect unknown_model      "job key 'model.name': bad value 'vgg'" -- --data.dir "$TMP/data" --model.name vgg
expect bad_yaml_key       "unknown job key 'train.batch_sizee'" -- "$TMP/badkey.yaml"
expect bad_yaml           "not valid YAML" -- "$TMP/badyaml.yaml"
expect missing_job        "job file '$TMP/none.yaml'" -- "$TMP/none.yaml"
expect bad_value          "job key 'optimizer.lr': bad value 'fast'" -- --optimizer.lr fast
expect unknown_flag       "--no-such-flag" -- --no-such-flag 3
expect key_twice          "job key 'train' is given twice" -- "$TMP/twice.yaml"
expect name_not_a_dir     "job key 'name': bad value 'a/b'" -- --name a/b
# Site flags: refused without a coordinator, and checked before any data is read or call made.
SITE=(--data.dir "$TMP/data" --coordinator 127.0.0.1:1 --site s)
expect site_flag_alone    "--site, --insecure: only with --coordinator" -- --data.dir "$TMP/data" --site s --insecure
expect site_name_a_path   "--site 'a/b': the site name 'a/b' is not" -- --data.dir "$TMP/data" \
  --coordinator 127.0.0.1:1 --site a/b --insecure
expect resume_at_a_site   "--resume: not for a site" -- "${SITE[@]}" --insecure --resume auto
expect ca_not_pem         "--tls-ca '$TMP/badkey.yaml': no PEM certificate" -- "${SITE[@]}" --tls-ca "$TMP/badkey.yaml"
expect dump_dir_is_a_file "--dump-updates '$TMP/a-file': cannot create the directory" -- "${SITE[@]}" --insecure \
  --dump-updates "$TMP/a-file"

BIN="$COORD"
C=(--data.dir "$TMP/data" --run_dir "$TMP/coord")
expect listen_port        "--listen '127.0.0.1:99999': give HOST:PORT" -- "${C[@]}" --insecure --no-auth \
  --listen 127.0.0.1:99999
expect cert_not_pem       "--tls-cert '$TMP/badkey.yaml': no PEM certificate" -- "${C[@]}" --no-auth \
  --tls-cert "$TMP/badkey.yaml" --tls-key "$TMP/badkey.yaml"
expect models_dir_a_file  "--dump-models '$TMP/a-file': cannot create the directory" -- "${C[@]}" --insecure \
  --no-auth --dump-models "$TMP/a-file"
BIN="$WORKER"

# And the same small directory trains fine, so the errors above are about the defects alone.
if "$WORKER" --data.dir "$TMP/data" --train.epochs 1 --train.batch_size 4 --run_dir "$TMP/run" >/dev/null 2>&1; then
  echo "ok   small_valid_run"; passed=$((passed+1))
else
  echo "FAIL small_valid_run"; fail=$((fail+1))
fi
echo "$passed passed, $fail failed"
[[ $fail -eq 0 ]]
