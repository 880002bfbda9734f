#!/usr/bin/env bash
# The README's second command (and what CI runs): installs every dependency, builds, and runs the
# whole test suite with ctest.
#   deploy/test.sh [--sanitize address|thread] [ARGS...]   (ARGS: ctest's; under thread, gtest's)
# --sanitize address: the whole suite (unit and multi-process tests) against an ASan+UBSan build
# (build-asan/); any sanitizer report fails the test that made it.
# --sanitize thread: the RoundManager, coordinator service, secure round and Reducer unit tests
# against a ThreadSanitizer build (build-tsan/); any report fails them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SANITIZE=""
if [[ ${1:-} == --sanitize ]]; then
  SANITIZE=${2:-}
  shift 2 || { echo "test: --sanitize takes address or thread" >&2; exit 2; }
fi
bash "$ROOT/deploy/setup.sh"
case "$SANITIZE" in
  "")
    bash "$ROOT/deploy/build.sh"
    cd "${BUILD_DIR:-$ROOT/build}"
    ctest --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 900 "$@" ;;
  address)
    # Leaks are not checked: LibTorch's caching allocator and Open MPI hold memory until exit.
    # Set before the build, whose test discovery runs the unit-test binary; the multi-process
    # tests' binaries inherit them.
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    bash "$ROOT/deploy/build.sh" --sanitize address
    cd "${BUILD_DIR:-$ROOT/build-asan}"
    # Sanitized binaries run 2-5x slower: longer timeouts.
    ctest --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 2700 "$@" ;;
  thread)
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0:suppressions=$ROOT/deploy/tsan.supp"
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    bash "$ROOT/deploy/build.sh" --sanitize thread
    cd "${BUILD_DIR:-$ROOT/build-tsan}"
    # Extra arguments go to the gtest binaries (e.g. --gtest_repeat=5).
    ./tests/allround_unit_tests \
      --gtest_filter='RoundManagerTest.*:CoordinatorServiceTest.*:ReducerOverThreadsCases*:CheckedOverThreads.*:ByzantineRound.*' "$@"
    if [[ -x ./tests/secure_round_tests ]]; then ./tests/secure_round_tests "$@"; fi ;;
  *) echo "test: --sanitize takes address or thread, not '$SANITIZE'" >&2; exit 2 ;;
esac
