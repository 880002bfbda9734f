#!/usr/bin/env bash
# allround-ckpt on a real training run: an exported checkpoint loads in Python with safetensors,
# its bytes match the stored checksums and PyTorch, given its weights, reproduces the accuracy
# allround recorded; a flipped byte makes verify name the tensor, makes --resume auto refuse with
# a clear error, and --resume with the previous id resumes from that one.
set -u
WORKER="$1" CKPT="$2" ROOT="$3"
DATA=/usr/share/datasets/fashion-mnist
PY="${ALLROUND_VENV:-/opt/allround-venv}/bin/python3"
[[ -d $DATA ]] || { echo "no $DATA: skipped"; exit 77; }
# The one test whose point is the outside reader: it needs the safetensors package (PyPI), not our own.
"$PY" -c 'import safetensors' 2>/dev/null ||
  { echo "no safetensors package in $PY (from PyPI; deploy/setup.sh installs it): skipped"; exit 77; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }

ARGS=(--data.train_limit 3000 --data.test_limit 500 --train.epochs 3 --threads 1 --train.progress_every_s 0
      --checkpoint.keep_last 10 --run_dir "$TMP/run")
"$WORKER" "${ARGS[@]}" > /dev/null 2>&1 || { echo "FAIL: training"; exit 1; }
DB="$TMP/run/checkpoints"
ID=simple_cnn/0000000003

"$CKPT" show "$DB" "$ID" > "$TMP/show"
check "export to safetensors" '"$CKPT" export "$DB" "$ID" "$TMP/model.safetensors" --format safetensors > /dev/null'
check "safetensors loads in Python; bytes match the stored CRC32C; PyTorch reproduces the recorded accuracy" \
  '"$PY" - "$TMP/model.safetensors" "$TMP/show" "$ROOT/bench/peers" "$DATA" <<"PY"
import re, sys
import torch
from safetensors.torch import load_file
path, show, peers, data = sys.argv[1:5]
sys.path.insert(0, peers)
from torch_models import idx, SimpleCNN

def crc32c(b):
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    crc = 0xFFFFFFFF
    for x in b:
        crc = (crc >> 8) ^ table[(crc ^ x) & 0xFF]
    return crc ^ 0xFFFFFFFF

tensors = load_file(path)
text = open(show).read()
manifest = {m[0]: (m[1], m[2], int(m[3], 16)) for m in
            re.findall(r"^  (\S+)\s+(\S+)\s+\[([^\]]*)\].*crc32c ([0-9a-f]{8})$", text, re.M)}
assert set(manifest) == set(tensors), (set(manifest) ^ set(tensors))
names = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64", torch.uint8: "uint8"}
for name, t in tensors.items():
    dtype, shape, crc = manifest[name]
    assert names[t.dtype] == dtype, name
    assert [int(s) for s in shape.split(", ") if s] == list(t.shape), name
    if t.numel() < 200000:  # the pure-Python CRC is slow; these are all but none
        assert crc32c(t.contiguous().view(torch.uint8).numpy().tobytes()) == crc, name
model = SimpleCNN()
model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
model.eval()
x = idx(f"{data}/t10k-images-idx3-ubyte.gz")[:500].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)
y = idx(f"{data}/t10k-labels-idx1-ubyte.gz")[:500].long()
with torch.no_grad():
    acc = (model(x).argmax(1) == y).double().mean().item()
recorded = float(re.search(r"^metric test_accuracy: (\S+)", text, re.M).group(1))
print(f"pytorch accuracy {acc:.6f}, allround recorded {recorded:.6f}")
assert abs(acc - recorded) < 1e-6
PY'

# Weights made in PyTorch start an allround job (model.init): after one step at a learning rate of
# 1e-30 (no change), allround's accuracy equals PyTorch's on the same test examples.
check "PyTorch weights as a job's initial weights (model.init), and allround-ckpt import" '"$PY" - "$TMP/torch.safetensors" "$ROOT/bench/peers" "$DATA" > "$TMP/torch_acc" <<"PY"
import sys
import torch
from safetensors.torch import save_file
path, peers, data = sys.argv[1:4]
sys.path.insert(0, peers)
from torch_models import idx, SimpleCNN
torch.manual_seed(123)
model = SimpleCNN()
x = idx(f"{data}/train-images-idx3-ubyte.gz")[:2000].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)
y = idx(f"{data}/train-labels-idx1-ubyte.gz")[:2000].long()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for i in range(0, 2000, 50):  # a little training in PyTorch, so the weights are not trivial
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x[i:i+50]), y[i:i+50]).backward(); opt.step()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
xt = idx(f"{data}/t10k-images-idx3-ubyte.gz")[:500].float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)
yt = idx(f"{data}/t10k-labels-idx1-ubyte.gz")[:500].long()
model.eval()
with torch.no_grad():
    print(f"{(model(xt).argmax(1) == yt).double().mean().item():.6f}")
PY
"$WORKER" --model.init "$TMP/torch.safetensors" --data.train_limit 64 --data.test_limit 500 --train.epochs 1   --train.max_steps 1 --optimizer.lr 1e-30 --checkpoint.enabled false --threads 1 --run_dir "$TMP/init"   --summary-json "$TMP/init.json" > /dev/null 2>&1 &&
python3 -c "import json,sys; a=json.load(open(\"$TMP/init.json\"))[\"test_accuracy\"]; b=float(open(\"$TMP/torch_acc\").read()); print(f\"allround {a:.6f} pytorch {b:.6f}\"); sys.exit(abs(a-b) > 1e-6)" &&
"$CKPT" import "$TMP/imported" "$TMP/torch.safetensors" --run torch > /dev/null &&
"$CKPT" show "$TMP/imported" torch/0000000001 | grep -q "model/conv1.weight"'

# Flip one byte near the end of the newest blob file: the last tensor of the last checkpoint.
blob=$(ls "$DB"/*.blob | sort | tail -1)
size=$(stat -c %s "$blob")
printf '\x5a' | dd of="$blob" bs=1 seek=$((size - 100)) conv=notrunc status=none
"$CKPT" verify "$DB" > "$TMP/verify"; rc=$?
check "verify exits non-zero and names the tensor" '[[ $rc -ne 0 ]] && grep -q "BAD  $ID: checksum mismatch in rng/torch_cpu" "$TMP/verify"'
"$WORKER" "${ARGS[@]}" --train.epochs 4 --resume auto > /dev/null 2> "$TMP/auto.err"; rc=$?
check "--resume auto refuses the corrupt checkpoint with one clear error" \
  '[[ $rc -ne 0 ]] && grep -q "checkpoint $ID: checksum mismatch in rng/torch_cpu; refusing to resume" "$TMP/auto.err"'
"$WORKER" "${ARGS[@]}" --train.epochs 4 --resume simple_cnn/0000000002 > /dev/null 2> "$TMP/prev.err"; rc=$?
check "--resume with the previous id resumes from it" \
  '[[ $rc -eq 0 ]] && grep -q "resumed from checkpoint simple_cnn/0000000002 (round 2" "$TMP/prev.err"'
"$CKPT" lsit "$DB" > /dev/null 2> "$TMP/sub.err"; rc=$?
check "a mistyped subcommand is named, with the known ones" \
  '[[ $rc -eq 2 ]] && grep -q "unknown subcommand .lsit. (one of: ls, show, verify, export, import, prune, diff, repair)" "$TMP/sub.err"'
n_before=$("$CKPT" ls "$DB" | wc -l)
"$CKPT" prune "$DB" --keep -1 > /dev/null 2> "$TMP/prune.err"; rc=$?
check "prune --keep -1 is refused and deletes nothing" \
  '[[ $rc -eq 2 ]] && grep -q -- "--keep" "$TMP/prune.err" && [[ $("$CKPT" ls "$DB" | wc -l) -eq $n_before ]]'
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
