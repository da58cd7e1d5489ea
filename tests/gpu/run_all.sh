#!/usr/bin/env bash
# Runs every GPU test and benchmark binary of a build folder (or of a bundle made by
# tests/gpu/bundle.sh) on a GPU machine, writes their JSON into an output folder and prints a
# compact table of results at the end.
#
# Usage: run_all.sh BUILD_DIR OUT_DIR
#   BUILD_DIR  a CMake build folder configured with -DFP_CUDA=ON, or a bundle; binaries are found
#              under BUILD_DIR/kernels and BUILD_DIR/node: *_gpu_test (GoogleTest) and
#              *_gpu_bench.
#              If BUILD_DIR/lib exists (a bundle), it is put first on LD_LIBRARY_PATH.
#   OUT_DIR    created if missing. Per binary NAME: NAME.json (a test's GoogleTest JSON report, a
#              benchmark's stdout) and NAME.log (everything else the binary printed).
# Then every baseline script (*_baseline.py: the same shapes timed with PyTorch on the same card,
# JSON on stdout) from BUILD_DIR/baselines (a bundle) or the source tree's kernels/ runs the same
# way (the source tree's node/ too), so each figure has its baseline from the same run.
# Each binary runs under a time limit (FP_GPU_TIMEOUT_S, default 900 seconds).
# Exit status: 0 when every binary passed or reported itself skipped (exit 77), 1 otherwise
# (including when no binary was found).
set -uo pipefail

build="${1:?usage: run_all.sh BUILD_DIR OUT_DIR}"
out="${2:?usage: run_all.sh BUILD_DIR OUT_DIR}"
timeout_s="${FP_GPU_TIMEOUT_S:-900}"
build="$(cd "$build" && pwd)" || exit 1
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 1
# Tests that read data from the source tree find it through FP_SOURCE_DIR: a bundle's copy, else
# the tree this script belongs to.
if [[ -z "${FP_SOURCE_DIR:-}" ]]; then
  if [[ -d "$build/src" ]]; then
    export FP_SOURCE_DIR="$build/src"
  else
    FP_SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    export FP_SOURCE_DIR
  fi
fi
if [[ -d "$build/lib" ]]; then
  export LD_LIBRARY_PATH="$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# NCCL's NVLink multicast (NVLS) can take a shared host's GPUs out of service; the tensor-parallel
# tests and benchmarks never need it.
export NCCL_NVLS_ENABLE=0

mapfile -t binaries < <(find "$build/kernels" "$build/node" -type f -perm -u+x \
  \( -name '*_gpu_test' -o -name '*_gpu_bench' \) 2>/dev/null | sort)
if [[ ${#binaries[@]} -eq 0 ]]; then
  echo "run_all: no *_gpu_test or *_gpu_bench binaries under $build/kernels or $build/node" >&2
  exit 1
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

rows=()
benchmarks=()
failures=0
for binary in "${binaries[@]}"; do
  name="$(basename "$binary")"
  echo "run_all: $name" >&2
  start=$(date +%s.%N)
  if [[ "$name" == *_gpu_test ]]; then
    kind='test'
    timeout "$timeout_s" "$binary" --gtest_output="json:$out/$name.json" >"$out/$name.log" 2>&1
    rc=$?
    passed=$(grep -oE '\[  PASSED  \] [0-9]+' "$out/$name.log" | grep -oE '[0-9]+$' || true)
    failed=$(grep -oE '\[  FAILED  \] [0-9]+ test' "$out/$name.log" | grep -oE '[0-9]+' || true)
    detail="${passed:-0} passed, ${failed:-0} failed"
  else
    kind='bench'
    timeout "$timeout_s" "$binary" >"$out/$name.json" 2>"$out/$name.log"
    rc=$?
    detail="$(wc -c <"$out/$name.json") bytes of JSON"
    benchmarks+=("$name")
  fi
  seconds=$(awk -v start="$start" -v end="$(date +%s.%N)" 'BEGIN { printf "%.1f", end - start }')
  case $rc in
    0) status=PASS ;;
    77) status=SKIP; detail="$(head -n 1 "$out/$name.log")" ;;
    124) status=TIMEOUT; failures=$((failures + 1)) ;;
    *) status="FAIL($rc)"; failures=$((failures + 1)) ;;
  esac
  rows+=("$(printf '%-44s %-5s %-9s %8s  %s' "$name" "$kind" "$status" "$seconds" "$detail")")
done

if [[ -d "$build/baselines" ]]; then
  baseline_dirs=("$build/baselines")
else
  source_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  baseline_dirs=("$source_root/kernels" "$source_root/node")
fi
mapfile -t baselines < <(find "${baseline_dirs[@]}" -name '*_baseline.py' 2>/dev/null | sort)
for script in "${baselines[@]}"; do
  name="$(basename "$script" .py)"
  echo "run_all: $name" >&2
  start=$(date +%s.%N)
  timeout "$timeout_s" python3 "$script" >"$out/$name.json" 2>"$out/$name.log"
  rc=$?
  benchmarks+=("$name")
  seconds=$(awk -v start="$start" -v end="$(date +%s.%N)" 'BEGIN { printf "%.1f", end - start }')
  if [[ $rc -eq 0 ]]; then status=PASS; else status="FAIL($rc)"; failures=$((failures + 1)); fi
  rows+=("$(printf '%-44s %-5s %-9s %8s  %s' "$name" base "$status" "$seconds" \
    "$(wc -c <"$out/$name.json") bytes of JSON")")
done

for name in "${benchmarks[@]}"; do
  echo
  echo "== $name (stderr) =="
  cat "$out/$name.log"
done
echo
printf '%-44s %-5s %-9s %8s  %s\n' binary kind status seconds detail
printf '%s\n' "${rows[@]}"
echo "outputs in $out"
[[ $failures -eq 0 ]]
