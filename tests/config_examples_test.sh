#!/usr/bin/env bash
# The example configurations in deploy/ parse: every key is an option of its command. A config
# with an unknown key must fail, which shows the check is live.
set -euo pipefail
binary="${1:?usage: config_examples_test.sh FIELDPRINT SOURCE_DIR}"
source_dir="${2:?usage: config_examples_test.sh FIELDPRINT SOURCE_DIR}"
"$binary" supervisor --config "$source_dir/deploy/config/supervisor.toml" --help >/dev/null
"$binary" supervisor --config "$source_dir/deploy/config/supervisor-cluster.toml" --help >/dev/null
"$binary" worker --config "$source_dir/deploy/config/worker.toml" --help >/dev/null
bad=$(mktemp)
trap 'rm -f "$bad"' EXIT
cat "$source_dir/deploy/config/worker.toml" >"$bad"
echo 'no-such-option = 1' >>"$bad"
if "$binary" worker --config "$bad" --help >/dev/null 2>&1; then
  echo "config_examples: a config with an unknown key was accepted"
  exit 1
fi
echo "config_examples: the example configs parse"
