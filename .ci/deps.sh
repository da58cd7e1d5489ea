#!/usr/bin/env bash
# Installs the Debian 12 packages fieldprint needs. Idempotent: when every package is already
# installed it only checks and returns.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libssl-dev openssl
  libboost1.81-dev libboost-json1.81-dev libboost-system1.81-dev
  librocksdb-dev
  protobuf-compiler libprotobuf-dev
  prometheus-cpp-dev
  libspdlog-dev libfmt-dev
  libcli11-dev
  libgtest-dev libgmock-dev
  libsentencepiece-dev
  clang clang-format libclang-rt-dev
  golang-go golang-golang-x-mod-dev
  etcd-server etcd-client
  prometheus
  curl python3 python3-yaml
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
