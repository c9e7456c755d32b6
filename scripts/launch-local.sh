#!/usr/bin/env bash
# Starts a coordinator and N CPU workers on loopback for a config, to try a
# multi-process job on one machine:
#
#   scripts/launch-local.sh N [CONFIG] [-- extra `--set` arguments for the coordinator]
#
# Without CONFIG the embedded smoke config is used, with its own run
# directory, runs/smoke-Np (N processes), so that it neither resumes nor
# disturbs the single-process smoke run in runs/smoke; `-- --set
# train.run_dir=DIR` picks another. Paths are relative to the current
# directory, as for `meshtrain train`. The job's token is a fresh random
# file (mode 600) in a temporary directory; the coordinator listens on
# 127.0.0.1:$PORT (default 29400). Metrics go to the run_dir/metrics.jsonl,
# as for a single-process run. Ctrl-C stops all. The binary is
# $MESHTRAIN_BIN, else this checkout's release build (built first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

n="${1:?usage: scripts/launch-local.sh N [CONFIG] [-- --set key=value ...]}"
shift
config=()
if [[ $# -gt 0 && "$1" != "--" ]]; then
  config=(--config "$1")
  shift
fi
[[ "${1:-}" == "--" ]] && shift
port="${PORT:-29400}"
if [[ ${#config[@]} -eq 0 && " $* " != *" train.run_dir="* && " $* " != *"--set=train.run_dir="* ]]; then
  set -- "$@" --set "train.run_dir=runs/smoke-${n}p"
fi

if [[ -z "${MESHTRAIN_BIN:-}" ]]; then
  cargo build --release -q -p meshtrain --manifest-path "$root/Cargo.toml"
fi
bin="${MESHTRAIN_BIN:-$root/target/release/meshtrain}"

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
