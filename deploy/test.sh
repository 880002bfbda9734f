#!/usr/bin/env bash
# The README's second command (and what CI runs): installs every dependency, builds, and runs the
# whole test suite with ctest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
bash "$ROOT/deploy/build.sh"
cd "${BUILD_DIR:-$ROOT/build}"
ctest --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 900
