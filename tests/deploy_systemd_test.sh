#!/usr/bin/env bash
# The systemd units of deploy/systemd pass `systemd-analyze verify` with no message at all
# (unknown keys and bad values are only warnings there, so any output fails the check). The
# units name /usr/local/bin/fieldprint, which does not exist on a build machine, so they are
# verified with that path pointed at this build's binary. A unit with a misspelt key must fail,
# which shows the check is live. Where Debian's etcd is installed, it must recognize every
# variable of etcd.default. Exits 77 (CTest: skipped) where systemd-analyze is missing.
set -euo pipefail
binary=$(realpath "${1:?usage: deploy_systemd_test.sh FIELDPRINT SOURCE_DIR}")
source_dir="${2:?usage: deploy_systemd_test.sh FIELDPRINT SOURCE_DIR}"
if ! command -v systemd-analyze >/dev/null; then
  echo "deploy_systemd: systemd-analyze not installed; skipped"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints systemd-analyze's messages for the units in "$@"; fails if it exits non-zero.
verify() {
  SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$@" 2>&1
}

units=()
for unit in "$source_dir"/deploy/systemd/*.service; do
  sed "s#/usr/local/bin/fieldprint#$binary#g" "$unit" >"$work/$(basename "$unit")"
  units+=("$work/$(basename "$unit")")
done
if ! messages=$(verify "${units[@]}") || [[ -n "$messages" ]]; then
  echo "deploy_systemd: systemd-analyze verify complains:"
  echo "$messages"
  exit 1
fi

mkdir "$work/broken"
sed 's/^Restart=/Restrat=/' "${units[0]}" >"$work/broken/$(basename "${units[0]}")"
if messages=$(verify "$work/broken/$(basename "${units[0]}")") && [[ -z "$messages" ]]; then
  echo "deploy_systemd: a unit with a misspelt key passed"
  exit 1
fi

# Debian's etcd recognizes every variable of etcd.default (it logs each one it uses, and
# complains about unknown ones; it then stops at the certificate files missing here, or after
# the timeout).
etcd_vars=0
if command -v etcd >/dev/null; then
  grep -E '^ETCD_[A-Z_]+=' "$source_dir/deploy/systemd/etcd.default" |
    sed "s#^ETCD_DATA_DIR=.*#ETCD_DATA_DIR=$work/etcd#" >"$work/etcd.env"
  mapfile -t assignments <"$work/etcd.env"
  log=$(env -i "${assignments[@]}" timeout 5 etcd 2>&1 || true)
  if grep -i 'unrecognized' <<<"$log"; then
    fail_etcd=yes
  fi
  for assignment in "${assignments[@]}"; do
    grep -qF "recognized and used environment variable ${assignment%%=*}" <<<"$log" ||
      fail_etcd=yes
    etcd_vars=$((etcd_vars + 1))
  done
  if [[ -n "${fail_etcd:-}" ]]; then
    echo "deploy_systemd: etcd does not take every variable of etcd.default:"
    echo "$log"
    exit 1
  fi
fi
echo "deploy_systemd: ${#units[@]} units verified, ${etcd_vars} etcd variables recognized"
