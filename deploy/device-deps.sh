#!/usr/bin/env bash
# Packs the libraries that allround builds against, taken from this Debian 12 machine (after
# deploy/setup.sh), into one relocatable archive for a GPU machine that has a compiler, CMake,
# CUDA and PyTorch but no apt and no internet. deploy/device-check.sh unpacks it into its build
# folder and points CMake at it; nothing is written outside that folder there.
#
# Usage: bash deploy/device-deps.sh [OUT.tar.xz]   (default: build-device/deps.tar.xz)
#
# What goes in: the headers, CMake package files and link-time .so names of the -dev packages
# below; the shared libraries they resolve to and every library those need in turn (by ldd),
# except the C and C++ runtimes that every Linux machine has; protoc and grpc_cpp_plugin. Static
# archives are left out, except GoogleTest's (it has no shared ones) and those a CMake file names.
# LibTorch, CUDA, NCCL and Open MPI are not packed: the GPU machine's PyTorch brings the first
# three, and a machine without MPI builds without the MPI backend.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="${1:-$ROOT/build-device/deps.tar.xz}"
DEV_PACKAGES=(
  libabsl-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev libgrpc-dev protobuf-compiler-grpc
  librocksdb-dev libgflags-dev libsnappy-dev liblz4-dev libzstd-dev libbz2-dev
  libssl-dev libc-ares-dev libre2-dev
)
# Every Linux machine has these, newer than Debian 12's; packing them would shadow the host's.
BASE_LIBS='^(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux-x86-64|linux-vdso)\.so'
ARCH=x86_64-linux-gnu

for p in "${DEV_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    { echo "device-deps: $p is not installed; run deploy/setup.sh first" >&2; exit 1; }
done

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
P="$STAGE/usr"  # the prefix that CMake is pointed at there

# 1. The -dev packages' own files: headers, CMake files, .so link names, tools.
for p in "${DEV_PACKAGES[@]}"; do
  dpkg -L "$p" | while read -r f; do
    [[ -f $f || -L $f ]] || continue
    case "$f" in
      /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/* | /usr/src/*) continue ;;
      *.a) [[ $f == */libgtest*.a || $f == */libgmock*.a ]] || continue ;;
    esac
    mkdir -p "$STAGE$(dirname "$f")"
    cp -a "$f" "$STAGE$f"
  done
done

# CMake refuses to load a package whose targets file names a missing file, and some name static
# archives (gflags, RocksDB, Snappy, zstd) beside the shared libraries allround links. Those are
# packed too; an empty archive stands in for one over 4 MB (RocksDB's 33 MB), never linked.
grep -rhoE "lib[A-Za-z0-9_+.-]+\.a\"" "$STAGE/usr/lib/$ARCH/cmake" | tr -d '"' | sort -u |
  while read -r a; do
    [[ -e "$STAGE/usr/lib/$ARCH/$a" || ! -e "/usr/lib/$ARCH/$a" ]] && continue
    if (($(stat -c %s "/usr/lib/$ARCH/$a") <= 4 * 1024 * 1024)); then
      cp "/usr/lib/$ARCH/$a" "$STAGE/usr/lib/$ARCH/"
    else
      ar rc "$STAGE/usr/lib/$ARCH/$a"
    fi
  done

# 2. What the link names point to, and the whole closure of shared libraries they need.
copy_lib() {  # copy_lib PATH: the file and every link on the way to it, under their own names
  local f=$1 d="$P/lib/$ARCH" next
  while [[ -L $f ]]; do
    next=$(readlink "$f")
    [[ -L "$d/$(basename "$f")" || -e "$d/$(basename "$f")" ]] ||
      ln -s "$(basename "$next")" "$d/$(basename "$f")"
    [[ $next == /* ]] || next="$(dirname "$f")/$next"
    f=$next
  done
  [[ -e "$d/$(basename "$f")" ]] || cp "$f" "$d/"
}
mkdir -p "$P/lib/$ARCH"
for link in "$P/lib/$ARCH"/*.so; do
  [[ -L $link ]] && copy_lib "/usr/lib/$ARCH/$(basename "$link")"
done
# ldd lists a file's whole closure, so one pass over what is packed so far reaches its end.
for elf in "$P/lib/$ARCH"/*.so.* "$P/bin"/*; do
  [[ -f $elf && ! -L $elf ]] || continue
  ldd "$elf" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
    while read -r name path; do
      [[ $name =~ $BASE_LIBS ]] && continue
      [[ -e "$P/lib/$ARCH/$name" ]] || copy_lib "$path"
    done
done

# The build runs protoc and grpc_cpp_plugin; each finds its libraries here through a small
# wrapper, so nothing else in the build (the compiler above all) sees Debian's libraries.
mkdir -p "$P/libexec"
for tool in protoc grpc_cpp_plugin; do
  mv "$P/bin/$tool" "$P/libexec/$tool"
  cat > "$P/bin/$tool" <<SH
#!/bin/sh
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="\$here/../lib/$ARCH\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/../libexec/$tool" "\$@"
SH
  chmod +x "$P/bin/$tool"
done

# 3. Make the CMake files relocatable. Two Debian files name their libraries by absolute path.
for f in "$P/lib/$ARCH/cmake/rocksdb/RocksDBTargets.cmake" \
         "$P/lib/$ARCH/cmake/Snappy/SnappyTargets-relwithdebinfo.cmake"; do
  sed -i "/_realOrig\|_IMPORT_PREFIX \"\/usr/!s|\"/usr/lib/$ARCH/|\"\${_IMPORT_PREFIX}/lib/$ARCH/|g;
          /_realOrig/!s|;/usr/lib/$ARCH/|;\${_IMPORT_PREFIX}/lib/$ARCH/|g" "$f"
done
# Snappy's targets file sets its prefix to /usr outright instead of finding it from where it lies.
sed -i 's|^set(_IMPORT_PREFIX "/usr")$|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)|' \
  "$P/lib/$ARCH"/cmake/*/*.cmake
# gRPC looks for RE2 through pkg-config, whose .pc files name /usr; a CMake package file is
# looked for first, so one is written here.
mkdir -p "$P/lib/$ARCH/cmake/re2"
cat > "$P/lib/$ARCH/cmake/re2/re2Config.cmake" <<'CMAKE'
# Written by deploy/device-deps.sh: Debian's RE2 has only a pkg-config file.
get_filename_component(_re2_prefix "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)
if(NOT TARGET re2::re2)
  add_library(re2::re2 SHARED IMPORTED)
  set_target_properties(re2::re2 PROPERTIES
    IMPORTED_LOCATION "${_re2_prefix}/lib/x86_64-linux-gnu/libre2.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_re2_prefix}/include")
endif()
set(re2_FOUND TRUE)
CMAKE
# What still names /usr, less the "/usr move" blocks that only apply when loaded from /usr itself.
leftover=$(grep -rnE '"/usr/(lib|include)|;/usr/(lib|include)|"/usr"\)' "$P/lib/$ARCH/cmake" "$P/share/cmake" |
  grep -vE '_realOrig|PACKAGE_PREFIX_DIR "/usr"\)|_IMPORT_PREFIX "/usr/lib/[^"]*/cmake/[^"]*"\)' || true)
if [[ -n $leftover ]]; then
  echo "device-deps: CMake files that still name /usr:" >&2
  echo "$leftover" >&2
  exit 1
fi

mkdir -p "$(dirname "$OUT")"
tar -C "$STAGE" -cJf "$OUT" usr
echo "device-deps: $(du -sh "$STAGE/usr" | cut -f1) unpacked, $(du -h "$OUT" | cut -f1) packed: $OUT"
echo "device-deps: $(ls "$P/lib/$ARCH" | grep -c '\.so\.') shared libraries, $(ls "$P/bin" | wc -l) tools"
