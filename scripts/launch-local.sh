#!/usr/bin/env bash
# Starts a coordinator and N CPU workers on loopback for a config, to try a
# multi-process job on one machine:
#
#   scripts/launch-local.sh N [CONFIG] [-- extra `--set` arguments for the coordinator]
#
# Without CONFIG the embedded smoke config is used. The job's token is a
# fresh random file (mode 600) in a temporary directory; the coordinator
# listens on 127.0.0.1:$PORT (default 29400). Metrics go to the config's
# run_dir/metrics.jsonl, as for a single-process run. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:?usage: scripts/launch-local.sh N [CONFIG] [-- --set key=value ...]}"
shift
config=()
if [[ $# -gt 0 && "$1" != "--" ]]; then
  config=(--config "$1")
  shift
fi
[[ "${1:-}" == "--" ]] && shift
port="${PORT:-29400}"

cargo build --release -q -p meshtrain
bin="${MESHTRAIN_BIN:-target/release/meshtrain}"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/token"

"$bin" coordinator "${config[@]}" "$@" --workers "$n" \
  --listen "127.0.0.1:$port" --token-file "$tmp/token" &
coordinator=$!
pids+=("$coordinator")
sleep 1
for ((i = 0; i < n; i++)); do
  "$bin" worker --coordinator "127.0.0.1:$port" --token-file "$tmp/token" \
    2> >(sed "s/^/[worker $i] /" >&2) &
  pids+=("$!")
done
wait "$coordinator"
