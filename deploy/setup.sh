#!/usr/bin/env bash
# Installs every dependency of allround on a Debian 12 machine (run as root, or with sudo on PATH).
# Idempotent: when every package is already present it only checks and returns in a second or two.
# `setup.sh --bench` also installs the benchmark peers that come from PyPI (Flower).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git ca-certificates
  # the crash and resume tests find and signal processes with pgrep and pkill
  procps
  # deploy/device-deps.sh packs its archive with tar -J (the device_deps test runs it)
  xz-utils
  # LibTorch (CPU) and a fast BLAS: Debian's reference BLAS makes matrix products ~25x slower
  libtorch-dev libopenblas0-pthread
  # collectives
  libopenmpi-dev openmpi-bin
  # federated transport
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # the protocol-abuse tests (tests/hardening/) speak gRPC from Python: stubs made at build time
  python3-grpcio python3-protobuf
  # deploy/make-certs.sh makes a test CA and certificates for TLS
  openssl
  # checkpoints
  librocksdb-dev
  # secure aggregation (privacy/): X25519, ChaCha20, XChaCha20-Poly1305
  libsodium-dev
  # the coordinator's Prometheus metrics and status page (--metrics-listen); the status page's
  # test renders it in headless Chromium
  prometheus-cpp-dev libcpp-httplib-dev chromium python3-prometheus-client
  # tests and micro-benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # fuzzing the decoders of outside bytes (tests/fuzz/): clang's libFuzzer, AddressSanitizer, UBSan
  # (their runtimes are in libclang-rt-14-dev, only recommended by clang: named here)
  clang libfuzzer-14-dev libclang-rt-14-dev
  # small well-kept libraries
  libabsl-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libspdlog-dev libfmt-dev
  # data
  dataset-fashion-mnist fortunes
  # peers for side-by-side benchmarks and for reading exported checkpoints
  python3 python3-torch python3-numpy python3-venv python3-pip
  # bench/byzantine draws its heat map with matplotlib
  python3-matplotlib
)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
fi

# Python packages that Debian does not ship, in a venv that still sees Debian's torch and numpy.
VENV="${ALLROUND_VENV:-/opt/allround-venv}"
if [[ ! -x "$VENV/bin/python3" ]]; then
  $SUDO /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python3" -c 'import safetensors' 2>/dev/null; then
  $SUDO "$VENV/bin/pip" install -q safetensors || echo "setup: warning: safetensors not installed (no PyPI?)"
fi
# TensorBoard: its message definitions are compiled into the build (observe/), and the tests read
# the event files back with its own reader. "numpy<2" keeps Debian's numpy, which Debian's torch needs.
if ! "$VENV/bin/python3" -c 'import tensorboard.compat.proto.event_pb2' 2>/dev/null; then
  $SUDO "$VENV/bin/pip" install -q tensorboard "numpy<2" ||
    echo "setup: warning: tensorboard not installed (no PyPI?): runs will write no event files"
fi
# The privacy accountant's reference: Google's dp_accounting (tests/accountant_test.py).
if ! "$VENV/bin/python3" -c 'import dp_accounting' 2>/dev/null; then
  $SUDO "$VENV/bin/pip" install -q dp-accounting "numpy<2" || echo "setup: warning: dp-accounting not installed (no PyPI?)"
fi
# Benchmark peers only (bench/federated_overhead, bench/fedavg_niid --peer flower): Flower's simulation engine, in a venv of its own
# so that its numpy pin (Debian's torch 1.13 needs numpy < 2) does not touch the main one.
if [[ ${1:-} == --bench ]]; then
  BENCH_VENV="${ALLROUND_BENCH_VENV:-/opt/allround-bench-venv}"
  [[ -x "$BENCH_VENV/bin/python3" ]] || $SUDO /usr/bin/python3 -m venv --system-site-packages "$BENCH_VENV"
  if ! "$BENCH_VENV/bin/python3" -c 'import flwr, ray, torch; torch.ones(1).numpy()' 2>/dev/null; then
    $SUDO "$BENCH_VENV/bin/pip" install -q "flwr[simulation]" "numpy<2"
  fi
  # Opacus (bench/dp's peer): 1.4 is the last release for torch 1.13. --no-deps: Debian's torch calls
  # itself 1.13.0a0, a pre-release that pip does not count as ">=1.13", and would pull a 2 GB torch 2.x.
  if ! "$BENCH_VENV/bin/python3" -c 'import opacus, opt_einsum' 2>/dev/null; then
    $SUDO "$BENCH_VENV/bin/pip" install -q --no-deps "opacus==1.4.0" opt_einsum
  fi
  echo "setup: bench peers ready (python venv: $BENCH_VENV)"
fi
echo "setup: done (python venv: $VENV)"
