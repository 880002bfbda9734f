#!/usr/bin/env bash
# The README's first command: installs every dependency, builds, and runs the main job on its
# embedded default (SimpleCNN on Fashion-MNIST from Debian's dataset-fashion-mnist). Extra
# arguments go to allround-worker (a job file, or --KEY=VALUE overrides).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
bash "$ROOT/deploy/build.sh"
exec "$ROOT/build/worker/allround-worker" "$@"
