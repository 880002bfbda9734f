#!/usr/bin/env bash
# tests/fuzz/run.sh TARGET SECONDS: builds the libFuzzer target TARGET (tests/fuzz/TARGET.cc) with
# clang, AddressSanitizer and UndefinedBehaviorSanitizer into build-fuzz/ (or $FUZZ_BUILD_DIR), and
# runs it for SECONDS over a copy of its seed corpus (tests/fuzz/corpus/TARGET; the committed
# corpus is not changed), with tests/fuzz/TARGET.dict as its dictionary when there is one. Exits 0 when nothing crashed, 1 with the crashing input's path when
# something did, 77 (skipped) when clang or libFuzzer is missing (deploy/setup.sh installs Debian's
# clang and libfuzzer-14-dev). Leak detection is off: LibTorch's caching allocator holds memory
# until exit, which LeakSanitizer would report on every input.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: tests/fuzz/run.sh TARGET SECONDS (targets: $(cd "$(dirname "$0")" && ls corpus | tr '\n' ' '))" >&2
  exit 2
fi
TARGET=$1
SECS=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
CXX_BIN=${FUZZ_CXX:-clang++}
if [ ! -f "$ROOT/tests/fuzz/$TARGET.cc" ] || [ ! -d "$ROOT/tests/fuzz/corpus/$TARGET" ]; then
  echo "fuzz: no target '$TARGET' (tests/fuzz/$TARGET.cc and tests/fuzz/corpus/$TARGET)" >&2
  exit 2
fi
if ! command -v "$CXX_BIN" >/dev/null; then
  echo "fuzz: no $CXX_BIN: skipped (deploy/setup.sh installs clang and libfuzzer-14-dev)"
  exit 77
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe/p.cc"
if ! "$CXX_BIN" -fsanitize=fuzzer,address,undefined "$probe/p.cc" -o "$probe/p" 2>/dev/null; then
  echo "fuzz: $CXX_BIN cannot link libFuzzer with ASan and UBSan: skipped (install libclang-rt-14-dev and libfuzzer-14-dev)"
  exit 77
fi
# LibTorch where the main build found it (the suite passes its Torch_DIR), else where CMake finds it.
torch_dir=()
if [ -n "${FUZZ_TORCH_DIR:-}" ]; then torch_dir=(-DTorch_DIR="$FUZZ_TORCH_DIR"); fi
if ! CXX="$CXX_BIN" cmake -S "$ROOT/tests/fuzz" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${torch_dir[@]}" \
     >"$probe/configure.log" 2>&1; then
  tail -20 "$probe/configure.log" >&2
  echo "fuzz: configuring tests/fuzz failed (above)" >&2
  exit 1
fi
rm -f "$probe/configure.log"
cmake --build "$BUILD" --target "fuzz_$TARGET" -j"${JOBS:-2}" >/dev/null
cp -r "$ROOT/tests/fuzz/corpus/$TARGET/." "$probe/"
rm -f "$probe/p.cc" "$probe/p"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "fuzz: $TARGET for $SECS s from $(ls "$probe" | wc -l) seeds"
dict=()
if [ -f "$ROOT/tests/fuzz/$TARGET.dict" ]; then dict=(-dict="$ROOT/tests/fuzz/$TARGET.dict"); fi
if ! "$BUILD/fuzz_$TARGET" "${dict[@]}" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
     -artifact_prefix="$BUILD/crash-$TARGET-" -print_final_stats=1 "$probe" 2>"$BUILD/$TARGET.log"; then
  tail -40 "$BUILD/$TARGET.log" >&2
  echo "fuzz: $TARGET crashed; the input is $(ls -t "$BUILD"/crash-"$TARGET"-* 2>/dev/null | head -1)" >&2
  exit 1
fi
grep -E "stat::number_of_executed_units|stat::new_units_added" "$BUILD/$TARGET.log" | sed "s/^/fuzz: $TARGET /"
