#!/usr/bin/env bash
# The long fault campaign: a local supervisor cluster (3 supervisors on a 3-member etcd, 3 tiny
# workers) under load, with faults every few seconds for minutes, then the convergence check.
# Prints one JSON object on stdout and a table on stderr; exits non-zero on any violation.
#
#   tests/cluster/fault_campaign.sh BUILD_DIR [fieldprint_fault_campaign options]
#   tests/cluster/fault_campaign.sh build --seconds 600 --faults kill_leader
#   tests/cluster/fault_campaign.sh build --seconds 300 --faults \
#   kill_leader,pause_leader,isolate_leader,reset_leader,split,full_disk,replace_member,kill_etcd
#
# Defaults: 300 s of kill -9 of the leader, each restarted after 2 s. Needs etcd (etcd-server);
# as root the full-disk fault uses a tmpfs per supervisor, otherwise RLIMIT_FSIZE.
set -euo pipefail
build="${1:?usage: fault_campaign.sh BUILD_DIR [options]}"
shift
source_dir="$(cd "$(dirname "$0")/../.." && pwd)"
cmake --build "$build" --target fieldprint fieldprint_fault_campaign >&2
exec "$build/tests/cluster/fieldprint_fault_campaign" --binary "$build/fieldprint" \
  --source-dir "$source_dir" "$@"
