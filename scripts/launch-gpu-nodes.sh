#!/usr/bin/env bash
# Launches a meshtrain job on N GPU nodes over ssh: one process per node,
# driving all the GPUs it sees, all running one SPMD program (XLA's
# collectives go over NCCL):
#
#   scripts/launch-gpu-nodes.sh --config CONFIG [options] HOSTS_FILE
#
# HOSTS_FILE lists the nodes, one per line: `SSH_TARGET [ADDRESS]`, where
# ADDRESS is what the other nodes use to reach it (default SSH_TARGET
# without `user@`). `#` starts a comment.
#
# It copies the job token to every node (scp), starts `meshtrain coordinator`
# on the first node and one `meshtrain worker` on every node (ssh). Each
# node's output comes back on stderr prefixed with [node I]; the first
# process to fail stops all others, and the script exits with its status.
# The environment is left to you (--env): CUDA_VISIBLE_DEVICES to pick GPUs;
# for NCCL typically NCCL_SOCKET_IFNAME (the network interface, e.g. eth0),
# NCCL_IB_HCA / NCCL_IB_DISABLE=1 (InfiniBand adapters, or none),
# NCCL_DEBUG=INFO (to see what NCCL chose).
#
# Options:
#   --config PATH          the job's config, as a path on the first node (required)
#   --set KEY=VALUE        override a config key (repeatable; given to the coordinator)
#   --port PORT            the coordinator's port (default 29400)
#   --listen IP            the coordinator's listen address (default 0.0.0.0)
#   --token-file FILE      the job token (default: a fresh random one, mode 600)
#   --remote-token PATH    where the token goes on each node (default
#                          .meshtrain-job.token in the home directory)
#   --workdir DIR          cd here on every node first (relative paths start here)
#   --env NAME=VALUE       extra environment for every worker (repeatable)
#   --connect-timeout S    how long a worker waits for the coordinator (default 120)
#   --tls-ca PATH          CA certificate on the nodes: workers connect with TLS
#                          (the config's [coordinator] tls_cert/tls_key serve it)
#   --dry-run              print every scp/ssh command line, run nothing
#
# Environment: MESHTRAIN_BIN, the binary on the nodes (default ~/meshtrain);
# MESHTRAIN_SSH (default `ssh -tt -o BatchMode=yes`) and MESHTRAIN_SCP
# (default `scp -p -q -o BatchMode=yes`), split on spaces. Needs bash 4+
# here and bash as the nodes' login shell. Not run on GPU hardware from this
# project: see README "Running on a TPU pod or GPU cluster".

set -euo pipefail
PROG=launch-gpu-nodes.sh
# shellcheck source=scripts/launch-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch-common.sh"

while (($# > 0)); do
  case $1 in
  -h | --help) print_help "$0" && exit 0 ;;
  -*) parse_shared_option "$@" && shift "$REPLY" ;;
  *) HOSTS_FILES+=("$1") && shift ;;
  esac
done
check_shared_options
((${#HOSTS_FILES[@]} == 1)) ||
  usage_error "${#HOSTS_FILES[@]} hosts files given (${HOSTS_FILES[*]}): expected one, listing every node"
read_hosts "${HOSTS_FILES[0]}"
nodes=$REPLY
coord=${HOST_ADDRS[0]}

plan_token_copies "${TOKEN_FILE:-$NEW_TOKEN_PLACEHOLDER}"
plan_coordinator "${HOST_TARGETS[0]}" "$nodes"
for ((i = 0; i < nodes; i++)); do
  plan_worker "[node $i]" "${HOST_TARGETS[i]}" "$coord"
done
finish "GPU job: $nodes nodes, coordinator $coord:$PORT"
