#!/usr/bin/env bash
# Configures and builds allround into build/ (or $BUILD_DIR). Optional parts switch themselves off
# when their dependencies are missing (see cmake/optional_parts.cmake).
#   deploy/build.sh [--sanitize address|thread] [CMAKE ARGS...]
# --sanitize address builds with AddressSanitizer and UndefinedBehaviorSanitizer into build-asan/,
# --sanitize thread with ThreadSanitizer into build-tsan/ (RelWithDebInfo; $BUILD_DIR still wins).
# Our code is instrumented; LibTorch, Open MPI, gRPC and RocksDB come uninstrumented from Debian.
# deploy/test.sh --sanitize KIND runs the tests against such a build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SANITIZE=""
if [[ ${1:-} == --sanitize ]]; then
  SANITIZE=${2:-}
  shift 2 || { echo "build: --sanitize takes address or thread" >&2; exit 2; }
fi
flags=()
case "$SANITIZE" in
  "") BUILD_DIR="${BUILD_DIR:-$ROOT/build}" ;;
  address)
    BUILD_DIR="${BUILD_DIR:-$ROOT/build-asan}"
    san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    flags=(-DCMAKE_CXX_FLAGS="$san" -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
           -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined") ;;
  thread)
    BUILD_DIR="${BUILD_DIR:-$ROOT/build-tsan}"
    san="-fsanitize=thread -fno-omit-frame-pointer"
    flags=(-DCMAKE_CXX_FLAGS="$san" -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread"
           -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread") ;;
  *) echo "build: --sanitize takes address or thread, not '$SANITIZE'" >&2; exit 2 ;;
esac
BUILD_TYPE="${BUILD_TYPE:-$([[ -n $SANITIZE ]] && echo RelWithDebInfo || echo Release)}"
JOBS="${JOBS:-$(nproc)}"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "${flags[@]}" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS"
