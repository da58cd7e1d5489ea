#!/usr/bin/env bash
# deploy/container stays correct by construction where no container runtime exists:
# - runtime-packages.sh, run on this build's binary and SentencePiece shim, names installed
#   packages, and every shared library ldd resolves is a file of one of them (checked through
#   `dpkg -L`, not the script's `dpkg -S`);
# - it fails on a file that is not an ELF object;
# - every COPY source of the Containerfile exists in the source tree, and the build stage runs
#   .ci/deps.sh and runtime-packages.sh (no hand-written package list).
# A CUDA build passes the toolkit's root as a third argument: the libraries under it (NCCL, from
# NVIDIA's runfile rather than dpkg) are the CUDA variant's, not the CPU image's, and left out.
# Exits 77 (CTest: skipped) without dpkg (not a Debian machine).
set -euo pipefail
binary="${1:?usage: deploy_container_test.sh FIELDPRINT SOURCE_DIR}"
source_dir="${2:?usage: deploy_container_test.sh FIELDPRINT SOURCE_DIR}"
shim="$(dirname "$binary")/libfp_sentencepiece.so"
script="$source_dir/deploy/container/runtime-packages.sh"
containerfile="$source_dir/deploy/container/Containerfile"
provided=()
toolkit=""
if [[ -n "${3:-}" ]]; then
  toolkit=$(readlink -f "$3")
  provided=(--provided-under "$toolkit")
fi
if ! command -v dpkg-query >/dev/null; then
  echo "deploy_container: not a Debian system; skipped"
  exit 77
fi
fail() {
  echo "deploy_container: $*"
  exit 1
}

packages=$("$script" "${provided[@]}" "$binary" "$shim")
[[ -n "$packages" ]] || fail "runtime-packages.sh listed nothing"
files=""
for package in $packages; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || fail "$package is listed but not installed"
  files+=$(dpkg -L "$package")$'\n'
done
for library in $(ldd "$binary" "$shim" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
  real=$(readlink -f "$library")
  [[ -n "$toolkit" && "$real" == "$toolkit"/* ]] && continue
  found=""
  for path in "$library" "$real" "/usr$library" "/usr$real" "${library#/usr}" "${real#/usr}"; do
    if grep -qxF "$path" <<<"$files"; then found=yes; break; fi
  done
  [[ -n "$found" ]] || fail "$library is in no listed package"
done
if "$script" "$containerfile" >/dev/null 2>&1; then
  fail "runtime-packages.sh accepted a file that is not an ELF object"
fi

while read -r source; do
  [[ -e "$source_dir/$source" ]] || fail "the Containerfile copies $source, which does not exist"
done < <(awk '$1 == "COPY" && $2 !~ /^--/ {for (i = 2; i < NF; ++i) print $i}' "$containerfile")
grep -q '^RUN /tmp/deps.sh' "$containerfile" || fail "the build stage does not run .ci/deps.sh"
grep -q 'runtime-packages.sh /out/fieldprint /out/libfp_sentencepiece.so' "$containerfile" ||
  fail "the build stage does not derive the runtime packages"
echo "deploy_container: $(wc -w <<<"$packages") runtime packages:" $packages
