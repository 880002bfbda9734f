#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, a C++ compiler, CMake, the CUDA toolkit and
# PyTorch 2.x (whose wheels bring LibTorch and NCCL), but no internet and no apt. In under 8
# minutes it:
#   1. configures against the CUDA LibTorch inside PyTorch and the NCCL of its nvidia-nccl wheel,
#      with the other libraries from DEPS (parts whose dependencies are missing there, MPI for one,
#      are switched off by CMake options), and builds what the checks below run;
#   2. runs the NCCL backend tests (nccl_test) on the GPU;
#   3. runs a data-parallel smoke run: allround-worker --device cuda, SimpleCNN, one epoch, twice
#      to see that deterministic kernels make the two equal, and once with deterministic: false;
#      then two ranks over NCCL started with torchrun-style variables (on a one-GPU machine both
#      share it, which NCCL may refuse: the step shows the message a user then gets); then 5 steps
#      and the evaluation of every learning mode's example job (deploy/jobs) on the GPU;
#   4. compares GPU training throughput with PyTorch eager on the same model, batch and data;
# and prints every figure. It exits 1 when any check failed (naming each), 0 when all passed.
#
# Before: on a Debian 12 machine with deploy/setup.sh done, `bash deploy/device-deps.sh` (and,
# for real data, `cp -r /usr/share/datasets/fashion-mnist build-device/`); then copy the checkout
# with build-device/ over.
#
# Usage: bash deploy/device-check.sh [BUILD_DIR]     (default: build-gpu)
#   DEPS=FILE   the libraries allround builds against (abseil, gRPC, protobuf, RocksDB, yaml-cpp,
#               GoogleTest, ...), packed by `bash deploy/device-deps.sh` on a Debian 12 machine
#               with deploy/setup.sh done; default build-device/deps.tar.xz. Unpacked into
#               BUILD_DIR; nothing is written outside it. Without it, the machine's own are used.
#   DATA=DIR    Fashion-MNIST's four IDX files; default /usr/share/datasets/fashion-mnist, else
#               build-device/fashion-mnist, else a synthetic set made here.
#   TEXT=DIR    a text corpus for the mlm mode; default /usr/share/games/fortunes, else
#               build-device/text (cp -r /usr/share/games/fortunes build-device/text, 2.8 MB).
#   LIBTORCH=DIR  a CUDA LibTorch's CMake prefix, instead of the one inside python3's torch.
#   LOGS=DIR    where the whole configure and build logs go (default BUILD_DIR).
#   BUILD_TIMEOUT=S  seconds the build may take (default 240); past that, the PREBUILT binaries
#               stand in, so that a slow build does not eat the time the GPU checks need.
#   CMAKE_ARGS  more configure options, split on spaces: -DALLROUND_WITH_MPI=OFF, say, when making
#               the PREBUILT binaries on a machine that has Open MPI and the GPU machine has not.
#   PREBUILT=DIR  nccl_test, allround-worker and train_throughput_allround built elsewhere against
#               the same LibTorch (default build-device/prebuilt): each one the build here could
#               not make is taken from there, and the output says so, so that a failed build
#               still leaves the GPU checks run. They are made by this script itself on a
#               machine without a GPU, with LIBTORCH at the same PyTorch wheel's
#               torch/share/cmake (its nvidia-* wheels unzipped beside torch/, so it links).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="${1:-$ROOT/build-gpu}"
DEPS="${DEPS:-$ROOT/build-device/deps.tar.xz}"
PREBUILT="${PREBUILT:-$ROOT/build-device/prebuilt}"
LOGS="${LOGS:-$BUILD}"
PY=$(command -v python3)
START=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - START ))s)"; }
# Each check that fails is named here; the script goes on (the GPU time is short: every check
# runs) and exits 1 at the end, listing them.
FAILED=()
fail() { FAILED+=("$*"); echo "FAILED: $*"; }
mkdir -p "$BUILD" "$LOGS"

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
echo "$(c++ --version 2>&1 | head -1); $(cmake --version | head -1); $(nvcc --version 2>&1 | tail -1); $(nproc) cores"
PREFIX="${LIBTORCH:-$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')}"
# NCCL: the CUDA toolkit's if it has one, else the nvidia-nccl wheel that PyTorch depends on.
if [[ -z ${NCCL_HOME:-} ]]; then
  NCCL_HOME=$("$PY" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null) && export NCCL_HOME
fi
echo "LibTorch: $PREFIX; NCCL_HOME: ${NCCL_HOME:-none}"

if [[ -f $DEPS ]]; then
  step "dependencies from $DEPS"
  rm -rf "$BUILD/deps" && mkdir -p "$BUILD/deps" && tar -C "$BUILD/deps" -xJf "$DEPS" &&
    PREFIX="$PREFIX;$BUILD/deps/usr" && echo "unpacked into $BUILD/deps ($(du -sh "$BUILD/deps" | cut -f1))"
fi

step "configure"
# RPATH rather than RUNPATH: the unpacked libraries' own dependencies are found next to them, with
# no LD_LIBRARY_PATH for the whole machine.
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -DALLROUND_USE_PCH=ON ${CMAKE_ARGS:-} >"$LOGS/configure.log" 2>&1
CONFIGURED=$?
grep -E "allround|CMake Error|Could NOT" "$LOGS/configure.log" | head -20
if ((CONFIGURED != 0)); then echo "configure failed:"; grep -A8 "CMake Error" "$LOGS/configure.log" | head -40; fi

step "build"
if ((CONFIGURED == 0)); then
  timeout "${BUILD_TIMEOUT:-240}" cmake --build "$BUILD" -j"$(nproc)" \
    --target nccl_test allround-worker train_throughput_allround >"$LOGS/build.log" 2>&1
  BUILT=$?
  if ((BUILT == 0)); then echo "built nccl_test, allround-worker, train_throughput_allround"
  elif ((BUILT == 124)); then echo "build stopped after ${BUILD_TIMEOUT:-240} s; $(grep -c 'Building CXX' "$LOGS/build.log") compile steps started by then"
  else echo "build failed; the first errors:"; grep -m 12 -A4 "error" "$LOGS/build.log"; fi
fi

# pick NAME PATH: the binary built here, else the prebuilt one (its libraries are found through
# LD_LIBRARY_PATH: the unpacked dependencies, LibTorch's and NCCL's folders).
pick() {
  if [[ -x $2 ]]; then echo "$2"
  elif [[ -x $PREBUILT/$1 ]]; then
    echo "$1: not built here; using $PREBUILT/$1, built elsewhere" >&2
    echo "$PREBUILT/$1"
  fi
}
NCCL_TEST=$(pick nccl_test "$BUILD/tests/nccl_test")
WORKER=$(pick allround-worker "$BUILD/worker/allround-worker")
THROUGHPUT=$(pick train_throughput_allround "$BUILD/bench/train_throughput_allround")
RUN=()  # our binaries only: python3 keeps the machine's own libraries
if [[ $NCCL_TEST$WORKER$THROUGHPUT == *"$PREBUILT"* ]]; then
  TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  CUDA_LIBS="$TORCH_LIB/../../nvidia/cu13/lib:$TORCH_LIB/../../nvidia/cuda_runtime/lib:/usr/local/cuda/lib64"
  RUN=(env "LD_LIBRARY_PATH=$BUILD/deps/usr/lib/x86_64-linux-gnu:$TORCH_LIB:${NCCL_HOME:-.}/lib:$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
fi

step "NCCL backend tests"
if [[ -n $NCCL_TEST ]]; then
  # LibTorch's backtraces (frame #N lines) would push a failure's reason out of the tail.
  timeout 120 "${RUN[@]}" "$NCCL_TEST" >"$LOGS/nccl_test.log" 2>&1
  rc=$?
  grep -v -E '^frame #|^ *$' "$LOGS/nccl_test.log" | tail -24
  ((rc == 0)) || fail "nccl_test (exit $rc)"
else
  fail "nccl_test not built (see above)"
fi

step "data-parallel smoke run on the GPU (1 epoch, SimpleCNN)"
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
[[ -d $DATA ]] || DATA="$ROOT/build-device/fashion-mnist"
if [[ ! -f $DATA/train-images-idx3-ubyte.gz ]]; then
  # No dataset here: make a small synthetic IDX set so the run still exercises the path.
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
echo "data: $DATA"
# smoke NAME [FLAGS]: one epoch into $BUILD/NAME, its summary in $BUILD/NAME.json.
smoke() {
  local name=$1; shift
  rm -rf "$BUILD/$name" "$BUILD/$name.json"
  timeout 120 "${RUN[@]}" "$WORKER" --device cuda --data.dir "$DATA" --train.epochs 1 \
    --train.progress_every_s 5 --run_dir "$BUILD/$name" --summary-json "$BUILD/$name.json" "$@" 2>&1 | tail -6
}
if [[ -n $WORKER ]]; then
  smoke smoke
  [[ -f $BUILD/smoke.json ]] || fail "the smoke run wrote no summary"
  [[ -f $BUILD/smoke.json ]] && "$PY" -c "import json; s=json.load(open('$BUILD/smoke.json')); print('smoke: test_accuracy', s['test_accuracy'], 'samples/s', round(s['samples_per_s']))"
  step "determinism on the GPU: the same run again (deterministic: true, the default), then deterministic: false"
  smoke again >/dev/null
  smoke fast --deterministic false >/dev/null
  "$PY" - "$BUILD" <<'PY'
import json, os, sys
names = ("smoke", "again", "fast")
missing = [n for n in names if not os.path.exists(f"{sys.argv[1]}/{n}.json")]
if missing:
    sys.exit(f"no summary from the run(s) {', '.join(missing)}: see the smoke run's output above")
runs = {n: json.load(open(f"{sys.argv[1]}/{n}.json")) for n in names}
for n, s in runs.items():
    print(f"{n}: test_loss {s['test_loss']!r} test_accuracy {s['test_accuracy']} samples/s {s['samples_per_s']:.0f}")
a, b = runs["smoke"], runs["again"]
same = a["test_loss"] == b["test_loss"] and a["confusion_matrix"] == b["confusion_matrix"]
print("deterministic runs equal:", "yes" if same else "NO")
print(f"deterministic/fast samples/s: {a['samples_per_s'] / runs['fast']['samples_per_s']:.3f}")
sys.exit(0 if same else 1)
PY
  (($? == 0)) || fail "determinism on the GPU (two deterministic runs differ, or a run wrote no summary)"
else
  fail "allround-worker not built"
fi

# With one GPU both ranks land on it, which NCCL may refuse: the step shows what a user then sees.
step "two ranks over NCCL, started with torchrun-style variables ($(nvidia-smi -L 2>/dev/null | wc -l) GPUs)"
if [[ -n $WORKER ]]; then
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 timeout 90 "${RUN[@]}" "$WORKER" \
      --device cuda --data.dir "$DATA" --train.epochs 1 --train.max_steps 50 --run_dir "$BUILD/two-$r" \
      >"$LOGS/two-ranks-$r.log" 2>&1 &
  done
  wait
  for r in 0 1; do echo "rank $r:"; tail -4 "$LOGS/two-ranks-$r.log"; done
fi

# Every learning mode's training and evaluation code on the GPU (the smoke run above covers the
# supervised one only): a few steps of each example job, then its evaluation. A tensor left on the
# CPU, or an op that has no deterministic CUDA kernel (LibTorch warns, naming it), shows up here.
step "every learning mode on the GPU: 5 steps and the evaluation of each example job"
TEXT="${TEXT:-/usr/share/games/fortunes}"
[[ -d $TEXT ]] || TEXT="$ROOT/build-device/text"
if [[ -n $WORKER ]]; then
  for job in supervised_100 fixmatch_100 dino dino_vit vae gan mlm; do
    data=(--data.dir "$DATA")
    [[ $job == mlm ]] && data=(--data.dir "$TEXT" --text.vocab_size 1000)
    began=$(date +%s)
    out=$(timeout 120 "${RUN[@]}" "$WORKER" "$ROOT/deploy/jobs/$job.yaml" --device cuda "${data[@]}" --threads 4 \
            --train.epochs 1 --train.max_steps 5 --checkpoint.enabled false --run_dir "$BUILD/modes/$job" 2>&1)
    rc=$?
    echo "$job (exit $rc, $(($(date +%s) - began)) s): $(grep -E '^final|error' <<<"$out" | tail -2)"
    ((rc == 0)) || fail "mode job $job (exit $rc)"
    grep -i "deterministic" <<<"$out" | sort -u | head -4
  done
fi

step "GPU throughput: allround vs PyTorch eager (SimpleCNN and FedAvg CNN, batch 64, 3 runs each)"
if [[ -n $THROUGHPUT ]]; then
  for model in simple_cnn fedavg_cnn; do
    ours=() peer=()
    for i in 1 2 3; do
      ours+=("$("${RUN[@]}" "$THROUGHPUT" --device cuda --model "$model" --data "$DATA" --steps 300 |
                sed -n 's/^samples_per_s=\([0-9.]*\).*/\1/p')")
      peer+=("$("$PY" "$ROOT/bench/peers/torch_train.py" --device cuda --model "$model" --data "$DATA" --steps 300 |
                sed -n 's/^samples_per_s=\([0-9.]*\).*/\1/p')")
    done
    echo "$model runs: allround ${ours[*]}; pytorch ${peer[*]}"
    for v in "${ours[@]}" "${peer[@]}"; do [[ -n $v ]] || { fail "GPU throughput of $model: a run printed no figure"; break; }; done
    "$PY" -c "import statistics as s; a=[float(v) for v in '${ours[*]}'.split()]; b=[float(v) for v in '${peer[*]}'.split()]; print(f'$model: allround {s.median(a):.0f} samples/s, pytorch {s.median(b):.0f} samples/s, ratio={s.median(a)/s.median(b):.3f}')"
  done
else
  fail "train_throughput_allround not built"
fi
step "done"
if ((${#FAILED[@]} > 0)); then
  echo "${#FAILED[@]} check(s) failed:"
  printf '  %s\n' "${FAILED[@]}"
  exit 1
fi
echo "every check passed"
