#!/usr/bin/env bash
# Configures and builds allround into build/ (or $BUILD_DIR). Optional parts switch themselves off
# when their dependencies are missing (see cmake/optional_parts.cmake).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS"
