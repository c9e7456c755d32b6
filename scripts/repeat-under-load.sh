#!/usr/bin/env bash
# Runs a command N times in a row while every core is kept busy by a spin
# loop, as in a full-workspace test run on a small machine; stops at the
# first failure. The spin loops, and the command's whole process group
# when interrupted, always end with the script.
#
#   scripts/repeat-under-load.sh 20 cargo test -p meshtrain --test multihost
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N COMMAND..." >&2
  exit 2
fi
runs=$1
shift
spinners=()
child=
cleanup() {
  if [ -n "$child" ]; then
    kill -- "-$child" 2>/dev/null
  fi
  for pid in "${spinners[@]}"; do
    kill "$pid" 2>/dev/null
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$(nproc)"); do
  (while :; do :; done) &
  spinners+=("$!")
done
echo "repeat-under-load: ${#spinners[@]} spin loops (pids ${spinners[*]}) on $(nproc) cores"
for i in $(seq "$runs"); do
  start=$(date +%s)
  # Its own process group, so that an interrupted run leaves no children.
  setsid "$@" &
  child=$!
  wait "$child"
  status=$?
  child=
  if [ "$status" -ne 0 ]; then
    echo "repeat-under-load: run $i of $runs FAILED (exit $status) after $(($(date +%s) - start)) s"
    exit 1
  fi
  echo "repeat-under-load: run $i of $runs passed in $(($(date +%s) - start)) s"
done
echo "repeat-under-load: all $runs runs passed"
