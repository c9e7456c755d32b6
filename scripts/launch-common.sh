# shellcheck shell=bash
# Shared by scripts/launch-tpu-pod.sh and scripts/launch-gpu-nodes.sh (sourced,
# not run): hosts files, shell quoting, the token, and running one command
# per host over ssh with prefixed output. Needs bash 4 or newer.
#
# A launch is a plan: a list of command lines (scp of the token, then the
# coordinator, then one worker per host), each with a tag such as
# "[slice 0 worker 3]". `--dry-run` prints the plan; a real launch evals the
# very same lines, so what is printed is exactly what runs.

PLAN_TAGS=()
PLAN_LINES=()
PLAN_PHASE=() # copy | job

# Usage error: names the problem, exits 2.
usage_error() {
  echo "$PROG: $*" >&2
  echo "run '$PROG --help' for usage" >&2
  exit 2
}

# Sets REPLY to $1 quoted for a POSIX shell: as is when it has only safe
# characters, else in single quotes ('\'' for a quote inside).
quote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    REPLY=$s
  else
    REPLY="'${s//\'/\'\\\'\'}'"
  fi
}

# Sets REPLY to the arguments quoted and joined by spaces.
join_quoted() {
  local out="" a
  for a in "$@"; do
    quote "$a"
    out+="${out:+ }$REPLY"
  done
  REPLY=$out
}

# A path on the hosts: a leading ~/ stays unquoted so that the remote shell
# expands it; the rest is quoted.
# shellcheck disable=SC2088 # the ~ is for the remote shell, on purpose
quote_remote_path() {
  if [[ $1 == "~/"* ]]; then
    quote "${1#\~/}"
    REPLY="~/$REPLY"
  else
    quote "$1"
  fi
}

require_value() { # OPTION ARGC [VALUE]
  [[ $2 -ge 2 && ${3:-} != --* ]] || usage_error "$1 needs a value"
}

require_uint() { # OPTION VALUE MIN MAX
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    usage_error "$1 $2: expected a whole number from $3 to $4"
  fi
}

# Reads one hosts file into HOST_TARGETS / HOST_ADDRS (appended). Each line:
# `SSH_TARGET [ADDRESS]`; ADDRESS (what the other hosts use to reach this one,
# e.g. the internal IP) defaults to SSH_TARGET without a `user@`. Blank lines
# and `#` comments are skipped. Sets REPLY to the number of hosts read.
HOST_TARGETS=()
HOST_ADDRS=()
HOST_WHERE=()
read_hosts() {
  local file=$1 line n=0 lineno=0 target addr extra
  [[ -e $file ]] || usage_error "hosts file $file: not found"
  [[ -f $file && -r $file ]] || usage_error "hosts file $file: not a readable file"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -r target addr extra <<<"$line" || true
    [[ -z $target ]] && continue
    [[ -z $extra ]] ||
      usage_error "hosts file $file line $lineno: expected 'SSH_TARGET [ADDRESS]', got '$line'"
    [[ -n $addr ]] || addr=${target#*@}
    [[ $target =~ ^[A-Za-z0-9_.@%:-]+$ ]] ||
      usage_error "hosts file $file line $lineno: '$target' is not a host name (letters, digits, . _ - @ : %)"
    [[ $addr =~ ^[A-Za-z0-9_.%:-]+$ ]] ||
      usage_error "hosts file $file line $lineno: address '$addr' is not a host name or IP (letters, digits, . _ - : %)"
    local i
    for i in "${!HOST_TARGETS[@]}"; do
      [[ ${HOST_TARGETS[i]} != "$target" ]] ||
        usage_error "host $target is listed twice: ${HOST_WHERE[i]} and $file line $lineno"
    done
    HOST_TARGETS+=("$target")
    HOST_ADDRS+=("$addr")
    HOST_WHERE+=("$file line $lineno")
    n=$((n + 1))
  done <"$file"
  ((n > 0)) || usage_error "hosts file $file lists no hosts (one 'SSH_TARGET [ADDRESS]' per line)"
  REPLY=$n
}

# Appends a command line (already quoted) to the plan.
plan() { # PHASE TAG LINE
  PLAN_PHASE+=("$1")
  PLAN_TAGS+=("$2")
  PLAN_LINES+=("$3")
}

# The ssh and scp commands, word-split from MESHTRAIN_SSH / MESHTRAIN_SCP.
# -tt gives each remote command a terminal, so that it gets SIGHUP and ends
# when its ssh ends (a failed job or Ctrl-C stops every host).
ssh_prefix() {
  local words
  read -ra words <<<"${MESHTRAIN_SSH:-ssh -tt -o BatchMode=yes}"
  join_quoted "${words[@]}"
}
scp_prefix() {
  local words
  read -ra words <<<"${MESHTRAIN_SCP:-scp -p -q -o BatchMode=yes}"
  join_quoted "${words[@]}"
}

# The token: LOCAL_TOKEN is the given file, or NEW_TOKEN_PLACEHOLDER until
# make_token creates a fresh one.
NEW_TOKEN_PLACEHOLDER="<new-token-file>"
make_token() {
  TOKEN_DIR=$(mktemp -d)
  (
    umask 077
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_DIR/job.token"
  )
  chmod 600 "$TOKEN_DIR/job.token"
  REPLY="$TOKEN_DIR/job.token"
}

# Prints the plan (dry run).
print_plan() {
  local i
  for i in "${!PLAN_LINES[@]}"; do
    printf '%s\n' "${PLAN_LINES[i]}"
  done
}

# Prefixes every line of stdin with $1 (dropping the \r of a remote terminal).
prefix_lines() {
  awk -v tag="$1" '{ sub(/\r$/, ""); print tag " " $0; fflush() }'
}

RUN_PIDS=()
RUN_IDX=()
stop_all() {
  local p
  for p in ${RUN_PIDS[@]+"${RUN_PIDS[@]}"}; do
    [[ $p == - ]] || kill -TERM "$p" 2>/dev/null || true
  done
  for p in ${RUN_PIDS[@]+"${RUN_PIDS[@]}"}; do
    [[ $p == - ]] || wait "$p" 2>/dev/null || true
  done
  RUN_PIDS=()
}

# Runs the plan: the `copy` lines in parallel (all must succeed), then the
# `job` lines in parallel, each one's output prefixed with its tag on
# stderr. The first failure stops all the others; the exit status is that
# failure's (1 if it was 0 somehow), else 0.
run_plan() {
  local phase i p status
  trap 'echo "$PROG: interrupted; stopping every host" >&2; stop_all; exit 130' INT TERM
  for phase in copy job; do
    RUN_PIDS=()
    RUN_IDX=()
    for i in "${!PLAN_LINES[@]}"; do
      [[ ${PLAN_PHASE[i]} == "$phase" ]] || continue
      # exec: the background job is the ssh itself, so stopping it stops ssh.
      eval "exec ${PLAN_LINES[i]}" </dev/null > >(prefix_lines "${PLAN_TAGS[i]}" >&2) 2>&1 &
      RUN_PIDS+=("$!")
      RUN_IDX+=("$i")
    done
    local left=${#RUN_PIDS[@]}
    while ((left > 0)); do
      left=0
      for p in "${!RUN_PIDS[@]}"; do
        local pid=${RUN_PIDS[p]}
        [[ $pid == - ]] && continue
        if kill -0 "$pid" 2>/dev/null; then
          left=$((left + 1))
          continue
        fi
        status=0
        wait "$pid" || status=$?
        RUN_PIDS[p]=- # reaped
        if ((status != 0)); then
          i=${RUN_IDX[p]}
          echo "$PROG: ${PLAN_TAGS[i]} failed (exit status $status): ${PLAN_LINES[i]:0:200}" >&2
          local rest=() q
          for q in "${RUN_PIDS[@]}"; do [[ $q == - ]] || rest+=("$q"); done
          RUN_PIDS=(${rest[@]+"${rest[@]}"})
          ((${#RUN_PIDS[@]} == 0)) || echo "$PROG: stopping the other ${#RUN_PIDS[@]} processes" >&2
          stop_all
          return "$status"
        fi
      done
      ((left == 0)) || sleep 1
    done
  done
  trap - INT TERM
  return 0
}

# ---- options and command lines shared by both launchers ----

CONFIG=""
SETS=()
PORT=29400
LISTEN_IP=0.0.0.0
TOKEN_FILE=""
REMOTE_TOKEN=.meshtrain-job.token
WORKDIR=""
EXTRA_ENV=()
CONNECT_TIMEOUT=120
TLS_CA=""
DRY_RUN=0
HOSTS_FILES=()

# Prints the comment block at the top of the calling script (its --help).
print_help() {
  sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$1"
}

# Parses an option both launchers take; sets REPLY to the number of
# arguments used (0: not a shared option).
parse_shared_option() {
  REPLY=0
  case $1 in
  --config) require_value "$1" $# "${2:-}" && CONFIG=$2 && REPLY=2 ;;
  --set)
    require_value "$1" $# "${2:-}"
    [[ $2 == *=* ]] || usage_error "--set $2: expected KEY=VALUE"
    SETS+=("$2") && REPLY=2
    ;;
  --port) require_value "$1" $# "${2:-}" && require_uint "$1" "$2" 1 65535 && PORT=$((10#$2)) && REPLY=2 ;;
  --listen) require_value "$1" $# "${2:-}" && LISTEN_IP=$2 && REPLY=2 ;;
  --token-file) require_value "$1" $# "${2:-}" && TOKEN_FILE=$2 && REPLY=2 ;;
  --remote-token)
    require_value "$1" $# "${2:-}"
    [[ $2 != "~"* && -n $2 ]] || usage_error "--remote-token $2: give a path relative to the home directory, or absolute"
    REMOTE_TOKEN=$2 && REPLY=2
    ;;
  --workdir) require_value "$1" $# "${2:-}" && WORKDIR=$2 && REPLY=2 ;;
  --env)
    require_value "$1" $# "${2:-}"
    [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env $2: expected NAME=VALUE"
    EXTRA_ENV+=("$2") && REPLY=2
    ;;
  --connect-timeout)
    require_value "$1" $# "${2:-}" && require_uint "$1" "$2" 1 86400 && CONNECT_TIMEOUT=$((10#$2)) && REPLY=2
    ;;
  --tls-ca) require_value "$1" $# "${2:-}" && TLS_CA=$2 && REPLY=2 ;;
  --dry-run) DRY_RUN=1 && REPLY=1 ;;
  -*) usage_error "unknown option $1" ;;
  esac
}

# Checks shared by both launchers once the arguments are read.
check_shared_options() {
  [[ -n $CONFIG ]] || usage_error "--config CONFIG is required (the job's config, a path on the first host)"
  ((${#HOSTS_FILES[@]} > 0)) || usage_error "no hosts file given"
  local i j
  for i in "${!HOSTS_FILES[@]}"; do
    for ((j = 0; j < i; j++)); do
      [[ ${HOSTS_FILES[i]} != "${HOSTS_FILES[j]}" ]] || usage_error "hosts file ${HOSTS_FILES[i]} is given twice"
    done
  done
  if [[ -n $TOKEN_FILE ]]; then
    [[ -f $TOKEN_FILE && -r $TOKEN_FILE ]] || usage_error "--token-file $TOKEN_FILE: not a readable file"
    [[ -s $TOKEN_FILE ]] || usage_error "--token-file $TOKEN_FILE: the file is empty"
  fi
}

# The token's path in remote commands: home-relative as ~/PATH.
# shellcheck disable=SC2088 # the ~ is for the remote shell, on purpose
remote_token_arg() {
  if [[ $REMOTE_TOKEN == /* ]]; then quote "$REMOTE_TOKEN"; else quote_remote_path "~/$REMOTE_TOKEN"; fi
}

# The binary on the hosts.
remote_bin() { quote_remote_path "${MESHTRAIN_BIN:-~/meshtrain}"; }

# `cd WORKDIR && ` when --workdir was given.
cd_prefix() {
  if [[ -n $WORKDIR ]]; then quote_remote_path "$WORKDIR" && REPLY="cd $REPLY && "; else REPLY=""; fi
}

# Plans one scp of the token per host (in host order).
plan_token_copies() { # TOKEN_LOCAL_PATH
  local scp dest i
  scp_prefix
  scp=$REPLY
  for i in "${!HOST_TARGETS[@]}"; do
    quote "$1"
    local src=$REPLY
    quote "${HOST_TARGETS[i]}:$REMOTE_TOKEN"
    dest=$REPLY
    plan copy "[copy ${HOST_TARGETS[i]}]" "$scp $src $dest"
  done
}

# Plans the coordinator on TARGET for NWORKERS workers.
plan_coordinator() { # TARGET NWORKERS
  local cmd ssh
  cd_prefix
  cmd=$REPLY
  remote_bin
  cmd+="exec $REPLY coordinator"
  quote "$CONFIG"
  cmd+=" --config $REPLY"
  local s
  for s in ${SETS[@]+"${SETS[@]}"}; do
    quote "$s"
    cmd+=" --set $REPLY"
  done
  quote "$LISTEN_IP:$PORT"
  cmd+=" --workers $2 --listen $REPLY"
  remote_token_arg
  cmd+=" --token-file $REPLY --quiet"
  ssh_prefix
  ssh=$REPLY
  quote "$1"
  local target=$REPLY
  quote "$cmd"
  plan job "[coordinator]" "$ssh $target $REPLY"
}

# Plans one worker on TARGET: waits until the coordinator's port answers
# (bash's /dev/tcp, up to --connect-timeout seconds), then runs
# `meshtrain worker` with the given NAME=VALUE environment and --env.
plan_worker() { # TAG TARGET COORD_ADDR [NAME=VALUE ...]
  local tag=$1 target=$2 coord=$3
  shift 3
  local cmd="" q envs=("$@" ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})
  # Addresses are checked to be plain names (read_hosts), so no quoting.
  cmd+="w=0; until (: </dev/tcp/$coord/$PORT) 2>/dev/null; do w=\$((w+1)); "
  cmd+="if [ \$w -ge $CONNECT_TIMEOUT ]; then "
  cmd+="echo \"coordinator $coord:$PORT not reachable after $CONNECT_TIMEOUT s\" >&2; exit 1; fi; sleep 1; done; "
  cd_prefix
  cmd+="${REPLY}exec "
  if ((${#envs[@]} > 0)); then
    join_quoted "${envs[@]}"
    cmd+="env $REPLY "
  fi
  remote_bin
  cmd+="$REPLY worker"
  quote "$coord:$PORT"
  cmd+=" --coordinator $REPLY"
  remote_token_arg
  cmd+=" --token-file $REPLY"
  if [[ -n $TLS_CA ]]; then
    quote "$TLS_CA"
    cmd+=" --tls-ca $REPLY"
  fi
  ssh_prefix
  q=$REPLY
  quote "$target"
  q+=" $REPLY"
  quote "$cmd"
  plan job "$tag" "$q $REPLY"
}

# Dry run: prints the plan. Else creates the token if needed, runs the plan
# and exits with its status.
finish() { # SUMMARY
  if ((DRY_RUN)); then
    echo "# $1"
    [[ -n $TOKEN_FILE ]] || echo "# $NEW_TOKEN_PLACEHOLDER: a fresh random token (mode 600) made at launch"
    print_plan
    exit 0
  fi
  if [[ -z $TOKEN_FILE ]]; then
    make_token
    trap 'rm -rf "$TOKEN_DIR"' EXIT
    local i
    for i in "${!PLAN_LINES[@]}"; do
      PLAN_LINES[i]=${PLAN_LINES[i]//"$NEW_TOKEN_PLACEHOLDER"/$REPLY}
    done
  fi
  echo "$PROG: $1" >&2
  local status=0
  run_plan || status=$?
  if ((status == 0)); then echo "$PROG: every process finished" >&2; fi
  exit "$status"
}
