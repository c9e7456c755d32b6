#!/usr/bin/env bash
# Launches a meshtrain job on every host of a TPU VM slice over ssh: one
# `meshtrain train` process per host, all running the same step program.
# On TPU the hosts are joined by libtpu itself (the PJRT plugin discovers
# the slice's hosts from the TPU VM metadata), so no meshtrain coordinator
# transport carries gradients; the collectives run over ICI.
#
#   scripts/launch-tpu-slice.sh HOSTS_FILE CONFIG [--set key=value ...]
#
# HOSTS_FILE lists the slice's worker hosts, one per line, in worker-index
# order (e.g. from `gcloud compute tpus tpu-vm describe ... --format` or
# the slice's /etc/hosts). Each host needs the meshtrain binary at
# $MESHTRAIN_BIN (default ~/meshtrain) and the config at the same path;
# run_dir and the data should be on storage every host sees (a GCS FUSE
# mount or NFS) so that checkpoints written by each host's shards land in
# one checkpoint directory.
#
# This script cannot be exercised in meshtrain's CI (no TPU); it is the
# documented launch. For several GPU hosts the same shape applies with
# runtime.backend = "cuda": one process per host, joined by the CUDA
# plugin's distributed runtime, which exchanges its topology through the
# PJRT key-value callbacks; `meshtrain coordinator` serves that key-value
# store (see README "Multi-host"), but meshtrain does not yet hand it to the
# CUDA plugin's client (see the notes of the multi-host issue).
set -euo pipefail
hosts_file="${1:?usage: launch-tpu-slice.sh HOSTS_FILE CONFIG [--set ...]}"
config="${2:?usage: launch-tpu-slice.sh HOSTS_FILE CONFIG [--set ...]}"
shift 2
bin="${MESHTRAIN_BIN:-~/meshtrain}"
mapfile -t hosts < "$hosts_file"
pids=()
for i in "${!hosts[@]}"; do
  ssh -o BatchMode=yes "${hosts[$i]}" \
    "TPU_WORKER_ID=$i $bin train --config '$config' --quiet $*" \
    2> >(sed "s/^/[host $i] /" >&2) &
  pids+=("$!")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit "$status"
