#!/usr/bin/env bash
# Launches a meshtrain job on every host of one TPU slice, or of several
# slices joined over the data-center network (multi-slice), over ssh:
#
#   scripts/launch-tpu-pod.sh --config CONFIG [options] SLICE0_HOSTS [SLICE1_HOSTS ...]
#
# One hosts file per slice, in slice order; each lists that slice's hosts in
# TPU worker order (worker 0 first), one per line: `SSH_TARGET [ADDRESS]`,
# where ADDRESS is what the other hosts use to reach it (e.g. the internal
# IP; default SSH_TARGET without `user@`). `#` starts a comment. The
# internal IPs of a TPU VM slice, in worker order:
#   gcloud compute tpus tpu-vm describe NAME --zone ZONE \
#     --flatten='networkEndpoints[]' --format='csv[no-heading](networkEndpoints.ipAddress)'
#
# It copies the job token to every host (scp), starts `meshtrain coordinator`
# on the first host of slice 0 and one `meshtrain worker` on every host
# (ssh), each with the environment libtpu reads: TPU_WORKER_ID (the host's
# index in its slice) and TPU_WORKER_HOSTNAMES (its slice's addresses); with
# more than one slice also MEGASCALE_COORDINATOR_ADDRESS (first host of
# slice 0, with the megascale port), MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID
# and MEGASCALE_PORT. Each host's output comes back on stderr prefixed with
# [slice S worker W]; the first process to fail stops all others, and the
# script exits with its status.
#
# Options:
#   --config PATH          the job's config, as a path on the first host (required)
#   --set KEY=VALUE        override a config key (repeatable; given to the coordinator)
#   --slices N             the number of slices; checked against the hosts files
#   --port PORT            the coordinator's port (default 29400)
#   --listen IP            the coordinator's listen address (default 0.0.0.0)
#   --token-file FILE      the job token (default: a fresh random one, mode 600)
#   --remote-token PATH    where the token goes on each host (default
#                          .meshtrain-job.token in the home directory)
#   --workdir DIR          cd here on every host first (relative paths start here)
#   --env NAME=VALUE       extra environment for every worker (repeatable),
#                          e.g. LIBTPU_INIT_ARGS=...
#   --megascale-port PORT  port of the multi-slice runtime (default 8080)
#   --connect-timeout S    how long a worker waits for the coordinator (default 120)
#   --tls-ca PATH          CA certificate on the hosts: workers connect with TLS
#                          (the config's [coordinator] tls_cert/tls_key serve it)
#   --dry-run              print every scp/ssh command line, run nothing
#
# Environment: MESHTRAIN_BIN, the binary on the hosts (default ~/meshtrain);
# MESHTRAIN_SSH (default `ssh -tt -o BatchMode=yes`) and MESHTRAIN_SCP
# (default `scp -p -q -o BatchMode=yes`), split on spaces. Needs bash 4+
# here and bash as the hosts' login shell. Not run on TPU hardware from this
# project: see README "Running on a TPU pod or GPU cluster".

set -euo pipefail
PROG=launch-tpu-pod.sh
# shellcheck source=scripts/launch-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch-common.sh"

SLICES=""
MEGASCALE_PORT=8080
while (($# > 0)); do
  case $1 in
  -h | --help) print_help "$0" && exit 0 ;;
  --slices) require_value "$1" $# "${2:-}" && require_uint "$1" "$2" 1 4096 && SLICES=$((10#$2)) && shift 2 ;;
  --megascale-port)
    require_value "$1" $# "${2:-}" && require_uint "$1" "$2" 1 65535 && MEGASCALE_PORT=$((10#$2)) && shift 2
    ;;
  -*) parse_shared_option "$@" && shift "$REPLY" ;;
  *) HOSTS_FILES+=("$1") && shift ;;
  esac
done
check_shared_options
nslices=${#HOSTS_FILES[@]}
if [[ -n $SLICES && $SLICES != "$nslices" ]]; then
  usage_error "--slices $SLICES but $nslices hosts file(s) given: one hosts file per slice, in slice order"
fi

# Every slice's hosts, in slice order; all slices must be the same shape.
SLICE_START=()
per_slice=""
for s in "${!HOSTS_FILES[@]}"; do
  SLICE_START+=("${#HOST_TARGETS[@]}")
  read_hosts "${HOSTS_FILES[s]}"
  if [[ -z $per_slice ]]; then
    per_slice=$REPLY
  elif ((REPLY != per_slice)); then
    usage_error "slice $s (${HOSTS_FILES[s]}) has $REPLY hosts but slice 0 (${HOSTS_FILES[0]}) has $per_slice: the slices of a job must be the same shape"
  fi
done
nhosts=${#HOST_TARGETS[@]}
coord=${HOST_ADDRS[0]}

plan_token_copies "${TOKEN_FILE:-$NEW_TOKEN_PLACEHOLDER}"
plan_coordinator "${HOST_TARGETS[0]}" "$nhosts"
for ((s = 0; s < nslices; s++)); do
  first=${SLICE_START[s]}
  names=$(
    IFS=,
    echo "${HOST_ADDRS[*]:first:per_slice}"
  )
  for ((w = 0; w < per_slice; w++)); do
    env=("TPU_WORKER_ID=$w" "TPU_WORKER_HOSTNAMES=$names")
    if ((nslices > 1)); then
      env+=(
        "MEGASCALE_COORDINATOR_ADDRESS=$coord:$MEGASCALE_PORT"
        "MEGASCALE_NUM_SLICES=$nslices"
        "MEGASCALE_SLICE_ID=$s"
        "MEGASCALE_PORT=$MEGASCALE_PORT"
      )
    fi
    plan_worker "[slice $s worker $w]" "${HOST_TARGETS[first + w]}" "$coord" "${env[@]}"
  done
done
finish "TPU job: $nslices slice(s) x $per_slice hosts = $nhosts workers, coordinator $coord:$PORT"
