#!/usr/bin/env bash
# `fieldprint supervisor key`: without --create it refuses a data dir without a ledger key; with
# --create it makes one (mode 0600) named after the origin and prints its verifier key; a second
# run, with or without --create, prints the same key and leaves the file as it was; another
# origin is refused.
set -euo pipefail
binary="${1:?usage: supervisor_key_test.sh FIELDPRINT}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() {
  echo "supervisor_key: $*"
  exit 1
}
origin="fieldprint.test/ledger"

if "$binary" supervisor key --data-dir "$dir/data" --origin "$origin" >"$dir/out" 2>&1; then
  fail "printed a key for a data dir without one: $(cat "$dir/out")"
fi
[[ ! -e "$dir/data/checkpoint.key" ]] || fail "created a key without --create"

first=$("$binary" supervisor key --create --data-dir "$dir/data" --origin "$origin")
[[ "$first" == "$origin+"* ]] || fail "the verifier key '$first' is not named after the origin"
[[ $(stat -c %a "$dir/data/checkpoint.key") == 600 ]] || fail "checkpoint.key is not mode 0600"
stored=$(sha256sum <"$dir/data/checkpoint.key")

again=$("$binary" supervisor key --create --data-dir "$dir/data" --origin "$origin")
plain=$("$binary" supervisor key --data-dir "$dir/data" --origin "$origin")
[[ "$again" == "$first" && "$plain" == "$first" ]] || fail "the key changed: $first / $again / $plain"
[[ $(sha256sum <"$dir/data/checkpoint.key") == "$stored" ]] || fail "checkpoint.key was rewritten"

if "$binary" supervisor key --data-dir "$dir/data" --origin other.test/ledger >/dev/null 2>&1; then
  fail "accepted the key under another origin"
fi
echo "supervisor_key: $first"
