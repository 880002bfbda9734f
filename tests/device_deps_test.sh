#!/usr/bin/env bash
# deploy/device-deps.sh packs what a GPU machine without apt needs to build allround. This checks,
# on the machine that packs it, that the archive is whole and relocatable:
#   1. configured against the unpacked archive, every package our CMake files ask for (bar LibTorch,
#      CUDA and MPI, which the GPU machine brings or goes without) is found inside it;
#   2. its protoc and grpc_cpp_plugin, through their wrappers, generate our federated protocol, and
#      that code compiles against its headers;
#   3. a program linked against its gRPC and RocksDB with an RPATH (as device-check.sh links) loads
#      every library of theirs from the archive, the transitive ones too.
# Usage: device_deps_test.sh SOURCE_DIR
set -euo pipefail
SRC=$(cd "$1" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# The archive is packed from Debian's packages; elsewhere there is nothing to pack it from.
command -v dpkg-query >/dev/null || { echo "SKIP: not a Debian machine"; exit 77; }

bash "$SRC/deploy/device-deps.sh" "$T/deps.tar.xz"
mkdir "$T/u" && tar -C "$T/u" -xJf "$T/deps.tar.xz"
P="$T/u/usr"
LIB="$P/lib/x86_64-linux-gnu"

# 1. Every package from the archive.
cmake -S "$SRC" -B "$T/b" -DCMAKE_PREFIX_PATH="$P" -DALLROUND_USE_PCH=OFF -DALLROUND_WITH_CUDA=OFF \
  >"$T/configure.log" 2>&1 || { tail -30 "$T/configure.log"; fail "configure against the archive"; }
for var in absl_DIR gRPC_DIR RocksDB_DIR yaml-cpp_DIR CLI11_DIR nlohmann_json_DIR GTest_DIR \
           Protobuf_INCLUDE_DIR Protobuf_LIBRARY_RELEASE Protobuf_PROTOC_EXECUTABLE ZLIB_INCLUDE_DIR \
           ZLIB_LIBRARY_RELEASE; do
  value=$(sed -n "s/^$var:[A-Z]*=//p" "$T/b/CMakeCache.txt")
  [[ -n $value ]] || fail "$var is not in the CMake cache"
  [[ $value == "$P"/* ]] || fail "$var=$value: found outside the archive"
  echo "ok: $var inside the archive"
done

# 2. The tools run and agree with the headers.
mkdir "$T/gen"
"$P/bin/protoc" --version | grep -q "libprotoc 3" || fail "the archive's protoc does not run"
"$P/bin/protoc" -I "$SRC/comm" --cpp_out="$T/gen" --grpc_out="$T/gen" \
  --plugin=protoc-gen-grpc="$P/bin/grpc_cpp_plugin" "$SRC/comm/proto/federated.proto" ||
  fail "protoc with the archive's gRPC plugin"
c++ -std=c++17 -fsyntax-only -isystem "$P/include" -I "$T/gen" "$T/gen/proto/federated.grpc.pb.cc" ||
  fail "the generated code does not compile against the archive's headers"
echo "ok: protoc and grpc_cpp_plugin generate code that compiles against the archive"

# 3. Libraries load from the archive through the program's RPATH alone.
cat > "$T/prog.cc" <<'CC'
#include <grpcpp/grpcpp.h>
#include <rocksdb/db.h>
#include <cstdio>
int main() {
  std::printf("grpc %s rocksdb %d.%d\n", grpc::Version().c_str(), ROCKSDB_MAJOR, ROCKSDB_MINOR);
  rocksdb::Options options;
  return options.create_if_missing ? 1 : 0;
}
CC
c++ -std=c++17 -isystem "$P/include" "$T/prog.cc" -o "$T/prog" -L"$LIB" -lgrpc++ -lgpr -lrocksdb \
  -Wl,--disable-new-dtags -Wl,-rpath,"$LIB" || fail "linking against the archive's gRPC and RocksDB"
env -u LD_LIBRARY_PATH "$T/prog" || fail "the program does not run"
# The program needs each of these, directly or through gRPC and RocksDB.
for lib in libgrpc++.so libgrpc.so libcares.so libre2.so libabsl_synchronization.so librocksdb.so; do
  where=$(env -u LD_LIBRARY_PATH ldd "$T/prog" | awk -v l="$lib" 'index($1, l) == 1 {print $3}')
  [[ -n $where ]] || fail "$lib is not among the program's libraries"
  [[ $where == "$LIB"/* ]] || fail "$lib loads from $where, not from the archive"
  echo "ok: $lib from the archive"
done
echo "PASS"
