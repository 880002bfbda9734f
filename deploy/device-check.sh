#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, the CUDA toolkit with NCCL and PyTorch 2.x, but
# no internet and no apt. In under 8 minutes it:
#   1. configures against the CUDA LibTorch that PyTorch ships (parts whose dependencies are
#      missing there are switched off by CMake options) and builds what it can;
#   2. runs the NCCL backend tests (nccl_test) on the GPU;
#   3. runs a data-parallel smoke run: allround-worker --device cuda, SimpleCNN, one epoch;
#   4. compares GPU training throughput with PyTorch eager on the same model, batch and data;
# and prints every figure. Usage: bash deploy/device-check.sh [BUILD_DIR]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="${1:-$ROOT/build-gpu}"
PY=$(command -v python3)
START=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - START ))s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')

step "configure (CUDA LibTorch at $PREFIX)"
# Whatever is missing here switches itself off; the tests and benches need GoogleTest and CLI11.
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DALLROUND_USE_PCH=OFF 2>&1 | grep -E "allround|Error|error|Could NOT" | head -20
step "build"
cmake --build "$BUILD" -j"$(nproc)" --target nccl_test allround-worker train_throughput_allround 2>&1 |
  grep -E "error|Error|Built target" | head -30

step "NCCL backend tests"
if [[ -x $BUILD/tests/nccl_test ]]; then
  timeout 120 "$BUILD/tests/nccl_test" 2>&1 | tail -12
else
  echo "nccl_test not built (see the configure output above)"
fi

step "data-parallel smoke run on the GPU (1 epoch, SimpleCNN)"
DATA=/usr/share/datasets/fashion-mnist
if [[ ! -d $DATA ]]; then
  # No dataset package here: make a small synthetic IDX set so the run still exercises the path.
  DATA="$BUILD/synthetic-data"; mkdir -p "$DATA"
  "$PY" - "$DATA" <<'PY'
import gzip, struct, sys, torch
d = sys.argv[1]
g = torch.Generator().manual_seed(0)
for split, n in (("train", 12000), ("t10k", 2000)):
    y = torch.randint(0, 10, (n,), generator=g)
    x = (torch.rand(n, 28, 28, generator=g) * 60 + y.view(-1, 1, 1) * 19).clamp(0, 255).to(torch.uint8)
    with gzip.open(f"{d}/{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28) + x.numpy().tobytes())
    with gzip.open(f"{d}/{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + y.to(torch.uint8).numpy().tobytes())
PY
  echo "(synthetic data in $DATA)"
fi
if [[ -x $BUILD/worker/allround-worker ]]; then
  timeout 300 "$BUILD/worker/allround-worker" --device cuda --data.dir "$DATA" --train.epochs 1 \
    --train.progress_every_s 5 --run_dir "$BUILD/smoke" --summary-json "$BUILD/smoke.json" 2>&1 | tail -6
  [[ -f $BUILD/smoke.json ]] && "$PY" -c "import json; s=json.load(open('$BUILD/smoke.json')); print('smoke: test_accuracy', s['test_accuracy'], 'samples/s', round(s['samples_per_s']))"
else
  echo "allround-worker not built"
fi

step "GPU throughput: allround vs PyTorch eager (SimpleCNN and FedAvg CNN, batch 64, 3 runs each)"
if [[ -x $BUILD/bench/train_throughput_allround ]]; then
  for model in simple_cnn fedavg_cnn; do
    ours=() peer=()
    for i in 1 2 3; do
      ours+=("$("$BUILD/bench/train_throughput_allround" --device cuda --model "$model" --data "$DATA" --steps 300 |
                sed -n 's/^samples_per_s=\([0-9.]*\).*/\1/p')")
      peer+=("$("$PY" "$ROOT/bench/peers/torch_train.py" --device cuda --model "$model" --data "$DATA" --steps 300 |
                sed -n 's/^samples_per_s=\([0-9.]*\).*/\1/p')")
    done
    "$PY" -c "import statistics as s; a=[float(v) for v in '${ours[*]}'.split()]; b=[float(v) for v in '${peer[*]}'.split()]; print(f'$model: allround {s.median(a):.0f} samples/s, pytorch {s.median(b):.0f} samples/s, ratio={s.median(a)/s.median(b):.3f}')"
  done
else
  echo "train_throughput_allround not built"
fi
step "done"
