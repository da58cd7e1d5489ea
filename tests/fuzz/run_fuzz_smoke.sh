#!/usr/bin/env bash
# CTest fuzz_frame_decoder_smoke: builds the frame decoder fuzzer with clang in its own CMake tree
# (tests/fuzz/CMakeLists.txt) if needed, then runs it for a bounded time over the committed seed
# corpus. Fails on any crash, sanitizer report or violated property, and fails (never skips) when
# clang or the libFuzzer runtime is missing.
#
#   run_fuzz_smoke.sh SOURCE_DIR FUZZ_BUILD_DIR [SECONDS]
set -euo pipefail
source_dir="${1:?usage: run_fuzz_smoke.sh SOURCE_DIR FUZZ_BUILD_DIR [SECONDS]}"
build_dir="${2:?usage: run_fuzz_smoke.sh SOURCE_DIR FUZZ_BUILD_DIR [SECONDS]}"
seconds="${3:-20}"
corpus="$source_dir/tests/fuzz/corpus/frame_decoder"

if ! command -v clang++ >/dev/null; then
  echo "fuzz: clang++ not found; install clang and libclang-rt-dev (.ci/deps.sh)" >&2
  exit 1
fi
if [[ ! -f "$build_dir/build.ninja" ]]; then
  cmake -S "$source_dir/tests/fuzz" -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
    >"$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log" >&2
    echo "fuzz: configuring the clang fuzz tree failed" >&2
    exit 1
  }
fi
# At most two compile jobs: CI machines are small and other tests run beside this one.
cmake --build "$build_dir" -j 2 --target frame_decoder_fuzz

# New inputs go to a scratch directory, never into the committed corpus.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$build_dir/frame_decoder_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$build_dir/" "$scratch" "$corpus"
