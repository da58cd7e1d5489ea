#!/usr/bin/env bash
# Packs the GPU test and benchmark binaries of a CUDA build, stripped, with the non-system shared
# libraries they load, into one folder that runs on an Ubuntu 24.04 GPU machine (glibc and
# libstdc++ there are newer than this Debian 12 build machine's, so only those, the rest of the
# toolchain runtime, the NVIDIA driver's libcuda and NCCL's libnccl.so.2 (some 200 MB; GPU
# machines have their own, /usr/lib/x86_64-linux-gnu on the lent ones) are left to the target).
#
# Usage: bundle.sh [BUILD_DIR] [DEST]
#   BUILD_DIR  default /work/main/build-cuda (configured with -DFP_CUDA=ON and built)
#   DEST       default /work/main/.devbuild (ignored by git); emptied first
# Output: DEST/bundle.tar.xz, one folder `bundle` packed (xz: the binaries together are larger
# than what a device call can carry, packed they are a fifth of it). Its layout: bundle/kernels/...
# and bundle/node/... (the binaries, same relative paths as in the build), bundle/lib (shared
# libraries), bundle/baselines (the *_baseline.py scripts of kernels/ and node/), bundle/src (test
# data the GPU tests read), bundle/run_all.sh, bundle/MANIFEST. On the GPU machine:
#   tar -xJf DEST/bundle.tar.xz -C /tmp && /tmp/bundle/run_all.sh /tmp/bundle OUT_DIR
# which puts bundle/lib on LD_LIBRARY_PATH itself.
# Fails if a library cannot be resolved, if the CUDA runtime is linked dynamically (it must be
# static: CMAKE_CUDA_RUNTIME_LIBRARY Static), or if the archive exceeds kMaxBundleMiB.
set -euo pipefail

readonly kMaxBundleMiB=60
build="${1:-/work/main/build-cuda}"
dest="${2:-/work/main/.devbuild}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$(cd "$build" && pwd)"

mapfile -t binaries < <(find "$build/kernels" "$build/node" -type f -perm -u+x \
  \( -name '*_gpu_test' -o -name '*_gpu_bench' \) 2>/dev/null | sort)
if [[ ${#binaries[@]} -eq 0 ]]; then
  echo "bundle: no *_gpu_test or *_gpu_bench binaries under $build/kernels or $build/node" >&2
  exit 1
fi

# glibc's libraries, the GCC runtime, the driver and NCCL come from the target machine.
system_names=(linux-vdso ld-linux libc libm libmvec libpthread libdl librt libresolv libutil libanl
  'libstdc\+\+' libgcc_s libcuda libnccl)
system_libraries="^($(IFS='|'; echo "${system_names[*]}"))\\.so"
readonly system_libraries

rm -rf "$dest"
mkdir -p "$dest"
archive="$(cd "$dest" && pwd)/bundle.tar.xz"
dest="$dest/bundle"
mkdir -p "$dest/lib"
for binary in "${binaries[@]}"; do
  relative="${binary#"$build"/}"
  mkdir -p "$dest/$(dirname "$relative")"
  strip --strip-all -o "$dest/$relative" "$binary"
  while read -r soname path; do
    [[ "$soname" =~ $system_libraries ]] && continue
    if [[ "$soname" == libcudart.so* ]]; then
      echo "bundle: $relative links the CUDA runtime dynamically; it must be static" >&2
      exit 1
    fi
    if [[ "$path" == "not" || ! -f "$path" ]]; then
      echo "bundle: $relative needs $soname, which ldd cannot resolve" >&2
      exit 1
    fi
    if [[ ! -f "$dest/lib/$soname" ]]; then
      cp -L "$path" "$dest/lib/$soname"
      chmod u+w "$dest/lib/$soname"
      strip --strip-unneeded "$dest/lib/$soname"
    fi
  done < <(ldd "$binary" | awk '$2 == "=>" { print $1, $3 }')
done
cp "$here/run_all.sh" "$dest/run_all.sh"
mkdir -p "$dest/baselines"
find "$here/../../kernels" "$here/../../node" -name '*_baseline.py' \
  -exec cp {} "$dest/baselines/" \;
# Test data the GPU tests read through FP_SOURCE_DIR (run_all.sh points it at DEST/src).
mkdir -p "$dest/src/tests/hf_parity"
cp -r "$here/../hf_parity/data" "$dest/src/tests/hf_parity/"

(cd "$dest" && find . -type f ! -name MANIFEST -printf '%10s %p\n' | sort -k2) >"$dest/MANIFEST"
tar -C "$(dirname "$dest")" -cf - bundle | xz -T0 -3 >"$archive"
rm -rf "$dest"
bytes=$(stat -c %s "$archive")
mib=$(((bytes + 1048575) / 1048576))
echo "bundle: ${#binaries[@]} binaries, $mib MiB packed in $archive"
if ((mib > kMaxBundleMiB)); then
  echo "bundle: over the ${kMaxBundleMiB} MiB limit" >&2
  exit 1
fi
