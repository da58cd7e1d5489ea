#!/bin/sh
# Prints, one per line, the Debian packages that own the shared libraries the given ELF files
# load (ldd), so that the runtime image installs exactly those and nothing is listed by hand.
# Run in the build stage of deploy/container/Containerfile on the built binary and the
# SentencePiece shim; tests/deploy_container_test.sh runs it on this machine's build.
# Fails when a library is not found or belongs to no package.
#
# --provided-under DIR: libraries whose real path lies under DIR are provided by other means and
# left out (a CUDA toolkit installed from NVIDIA's runfile, not by dpkg, in a CUDA build).
set -eu
usage="usage: runtime-packages.sh [--provided-under DIR] ELF..."
provided=""
if [ "${1:-}" = "--provided-under" ]; then
  [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
  provided=$(readlink -f "$2")
  shift 2
fi
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
listing=$(ldd "$@")
if printf '%s\n' "$listing" | grep 'not found' >&2; then exit 1; fi
libraries=$(printf '%s\n' "$listing" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
owners=""
for library in $libraries; do
  real=$(readlink -f "$library")
  if [ -n "$provided" ]; then
    case "$real" in "$provided"/*) continue ;; esac
  fi
  # Debian 12 has merged /usr: dpkg may know a file under /lib or under /usr/lib.
  owner=""
  for path in "$library" "$real" "/usr$library" "/usr$real" "${library#/usr}" "${real#/usr}"; do
    owner=$(dpkg-query -S "$path" 2>/dev/null | grep -v '^diversion' | head -n 1 | cut -d: -f1)
    [ -n "$owner" ] && break
  done
  if [ -z "$owner" ]; then
    echo "runtime-packages: no Debian package owns $library" >&2
    exit 1
  fi
  owners="$owners$owner
"
done
printf '%s' "$owners" | sort -u
