#!/usr/bin/env bash
# Issue 29, defect 13: on a machine without PyPI (no safetensors package), the main federated test
# still runs its checks of our own numbers (tests/safetensors_np.py reads the files with numpy)
# instead of failing or skipping. The package is hidden by a module that refuses to import.
# Usage: no_pypi_test.sh COORDINATOR WORKER
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
PY="${ALLROUND_VENV:-/opt/allround-venv}/bin/python3"
export PYTHONPATH="$HERE/no_pypi${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c 'import safetensors' 2>/dev/null; then
  echo "FAIL: safetensors still imports with $HERE/no_pypi first on PYTHONPATH"; echo "0 passed, 1 failed"; exit 1
fi
echo "safetensors hidden from $PY; running federated_test.py"
exec /usr/bin/python3 "$HERE/../federated_test.py" "$@"
