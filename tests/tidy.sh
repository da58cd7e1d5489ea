#!/usr/bin/env bash
# Repository checks that the compiler does not make:
#   1. layering: common <- kernels <- node, common <- supervisor (by #include lines);
#   2. no line over 100 columns in source files;
#   3. clang-format leaves every source file unchanged.
set -uo pipefail
root="${1:?usage: tidy.sh SOURCE_DIR}"
cd "$root"
failures=0

fail() {
  echo "tidy: $*"
  failures=$((failures + 1))
}

sources=$(git ls-files --cached --others --exclude-standard -- \
  '*.h' '*.cc' '*.cu' '*.cuh' '*.proto' 2>/dev/null)

# Folder -> include prefixes it must never use.
declare -A forbidden=(
  [common]="kernels/ node/ supervisor/"
  [kernels]="node/ supervisor/"
  [node]="supervisor/"
  [supervisor]="kernels/ node/"
)
for file in $sources; do
  top=${file%%/*}
  [[ -n "${forbidden[$top]:-}" ]] || continue
  for prefix in ${forbidden[$top]}; do
    if grep -nE "^\s*#\s*include\s+\"$prefix" "$file" >/dev/null; then
      fail "$file includes $prefix (layering is common <- kernels <- node, common <- supervisor)"
    fi
  done
done

for file in $sources; do
  awk -v f="$file" 'length($0) > 100 { printf "tidy: %s:%d is %d columns (max 100)\n", f, NR, length($0); bad=1 } END { exit bad }' "$file" || failures=$((failures + 1))
done

if command -v clang-format >/dev/null; then
  for file in $sources; do
    if ! clang-format --dry-run --Werror "$file" >/dev/null 2>&1; then
      fail "$file is not clang-formatted (run: make format)"
    fi
  done
else
  fail "clang-format not found"
fi

if [[ $failures -ne 0 ]]; then
  echo "tidy: $failures problem(s)"
  exit 1
fi
echo "tidy: clean"
