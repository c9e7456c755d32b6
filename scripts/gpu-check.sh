#!/usr/bin/env bash
# meshtrain's check on one NVIDIA GPU: one script, about 5-8 minutes on an
# H100/H200 (every step has its own timeout; the whole is under 10 minutes).
#
#   scripts/gpu-check.sh [OUT_DIR]        (default: gpu-check-results)
#
# Needs: the meshtrain binary ($MESHTRAIN, default target/release/meshtrain,
# built with `cargo build --release -p meshtrain`), an NVIDIA driver, python3
# (for the data files and the comparisons), and for the JAX comparison a
# python3 with JAX for CUDA ($JAX_PYTHON, default python3). It prints one
# line per check, PASS, FAIL or SKIP with the numbers, and writes them to
# OUT_DIR/results.txt, with each step's log and the raw numbers beside it.
#
# Checks, in order:
#   env        nvidia-smi: GPU and driver (information only)
#   install    `meshtrain setup $BACKEND` (default cuda13) builds the tree and
#              resolves it. Offline (a machine that cannot reach the package
#              index), it is SKIPped unless MESHTRAIN_WHEELHOUSE holds the
#              pinned wheels; the rest then runs on the CUDA plugin of the
#              machine's own JAX install (its jax_plugins/xla_cudaNN, with the
#              nvidia/ wheels beside it, which meshtrain preloads the same way),
#              and results.txt says so.
#   devices    `meshtrain devices --backend $BACKEND`: platform cuda, >= 1 GPU
#   parity     a golden-style model (crates/gemma/tests/golden/multi_query, f32,
#              40 steps): GPU with runtime.matmul_precision = "highest" (no TF32)
#              and runtime.deterministic = true against the CPU plugin, step by
#              step. PASS: every step's loss within 1e-3 relative, step 0
#              within 1e-5. The same GPU run with TF32 allowed is reported too.
#   smoke      the embedded smoke config on the GPU (200 steps, bf16):
#              PASS if it finishes and the loss falls
#   bench      DESIGN.md's bench step (vocab 32000, d 512, 8 layers, batch
#              4 x 256), f32 and bf16, 30 steps: median step time, against
#              scripts/bench_jax_step.py (JAX's jit of the same step) on the
#              same GPU; also the compiled per-GPU peak memory of the step
#   pod        a 1-node CUDA job through the coordinator: `meshtrain
#              coordinator --workers 1` and one `meshtrain worker`; the worker
#              creates the CUDA client with the coordinator's key-value store
#              (node_id 0, num_nodes 1). PASS if the job finishes.
#
# A dry run of the script itself on a machine without a GPU:
#   QUICK=1 BACKEND=cpu MESHTRAIN=target/debug/meshtrain scripts/gpu-check.sh /tmp/gc
# (env and devices then FAIL, as they should; QUICK=1 trains 10 smoke steps
# and 4 bench steps instead of 200 and 30.)
set -uo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
out="${1:-gpu-check-results}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bin="${MESHTRAIN:-target/release/meshtrain}"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
backend="${BACKEND:-cuda13}"
jax_python="${JAX_PYTHON:-python3}"
smoke_steps=200
bench_steps=30
if [[ -n "${QUICK:-}" ]]; then smoke_steps=10; bench_steps=4; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
results="$out/results.txt"
: >"$results"
failed=0
report() { # STATUS NAME DETAILS
  printf '%-4s %-8s %s\n' "$1" "$2" "$3" | tee -a "$results"
  [[ "$1" == FAIL ]] && failed=1
  return 0
}
# run NAME SECONDS CMD...: output to $out/NAME.log; returns the command's status
run() {
  local name="$1" secs="$2"
  shift 2
  timeout "$secs" "$@" >"$out/$name.log" 2>&1
}
summary_of() { grep -E '^trained [0-9]+ steps' "$out/$1.log" | tail -1; }
# why NAME failed, from its exit status RC: a timeout, or the log's last lines
why() {
  if [[ "$2" -eq 124 ]]; then echo "$1 timed out"; else echo "$1 exit $2: $(tail -2 "$out/$1.log" | tr '\n' ' ')"; fi
}
# the compiled per-device peak memory meshtrain printed at start
peak_of() { grep -oE '[0-9.]+ [KMG]iB peak per device' "$out/$1.log" | tail -1; }

# ---- env ------------------------------------------------------------------
if gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"; then
  report INFO env "$gpu"
else
  report FAIL env "nvidia-smi failed: $gpu"
fi
[[ -x "$bin" ]] || { report FAIL env "no meshtrain binary at $bin (set MESHTRAIN)"; exit 1; }

# ---- install --------------------------------------------------------------
export MESHTRAIN_HOME="${MESHTRAIN_HOME:-$work/home}"
if run install 540 "$bin" setup "$backend"; then
  report PASS install "$(tail -2 "$out/install.log" | tr '\n' ' ')"
else
  major="${backend#cuda}"
  [[ "$major" == "$backend" || -z "$major" ]] && major=12
  plugin="$("$jax_python" -c "import jax_plugins.xla_cuda$major as m, os; print(os.path.join(m.__path__[0], 'xla_cuda_plugin.so'))" 2>/dev/null)"
  if [[ -n "$plugin" && -f "$plugin" ]]; then
    export MESHTRAIN_PJRT_PLUGIN="$plugin"
    report SKIP install "meshtrain setup $backend failed (offline? see install.log); the checks below use $plugin"
  else
    report FAIL install "meshtrain setup $backend failed (see install.log) and no jax_plugins.xla_cuda$major to fall back on"
    exit 1
  fi
fi

# ---- devices --------------------------------------------------------------
if run devices 180 "$bin" devices --backend "$backend" --json; then
  n="$(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(d["platform"], len(d["devices"]), d["devices"][0]["kind"], "PJRT", d["api_version"])' "$out/devices.log")"
  case "$n" in
    cuda\ *) report PASS devices "$n" ;;
    *) report FAIL devices "$n" ;;
  esac
else
  report FAIL devices "$(tail -3 "$out/devices.log" | tr '\n' ' ')"
fi

# ---- parity ---------------------------------------------------------------
python3 - "$work/parity-tokens.json" <<'EOF'
import json, sys
state, rows = 7, []
for r in range(64):
    row = []
    for i in range(32):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        row.append((state >> 33) % 96 if (state >> 60) == 0 else (r + 3 * i) % 96)
    rows.append(row)
json.dump({"input_ids": rows}, open(sys.argv[1], "w"))
EOF
cat >"$work/parity.toml" <<EOF
[model]
init = "hf:$root/crates/gemma/tests/golden/multi_query/model"
dtype = "f32"
[data]
format = "tokens"
path = "$work/parity-tokens.json"
seq_len = 32
batch_size = 8
shuffle = false
[optimizer]
lr = 1e-2
warmup_steps = 4
[train]
steps = 40
run_dir = "$work/parity-cpu"
log_every = 1
peak_flops_per_device = 1e12
export_final = false
[runtime]
backend = "cpu"
device_count = 1
EOF
gpu_sets=(--set "runtime.backend=\"$backend\"" --set runtime.deterministic=true
  --set 'runtime.matmul_precision="highest"' --set runtime.gpu_preallocate=false)
run parity-cpu 240 "$bin" train --quiet --config "$work/parity.toml"
cpu_rc=$?
run parity-gpu 240 "$bin" train --quiet --config "$work/parity.toml" "${gpu_sets[@]}" \
  --set "train.run_dir=\"$work/parity-gpu\""
gpu_rc=$?
run parity-tf32 240 "$bin" train --quiet --config "$work/parity.toml" \
  --set "runtime.backend=\"$backend\"" --set runtime.gpu_preallocate=false \
  --set "train.run_dir=\"$work/parity-tf32\""
if [[ $cpu_rc -ne 0 || $gpu_rc -ne 0 ]]; then
  report FAIL parity "$(why parity-cpu $cpu_rc); $(why parity-gpu $gpu_rc)"
else
  cp "$work/parity-cpu/metrics.jsonl" "$out/parity-cpu.jsonl"
  cp "$work/parity-gpu/metrics.jsonl" "$out/parity-gpu.jsonl"
  cp "$work/parity-tf32/metrics.jsonl" "$out/parity-tf32.jsonl" 2>/dev/null
  verdict="$(python3 - "$out" <<'EOF'
import json, os, sys
d = sys.argv[1]
def losses(name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return None
    return {j["step"]: j["loss"] for j in map(json.loads, open(p))}
cpu, gpu, tf32 = losses("parity-cpu.jsonl"), losses("parity-gpu.jsonl"), losses("parity-tf32.jsonl")
rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)
worst = max(rel(gpu[s], cpu[s]) for s in cpu)
first = rel(gpu[0], cpu[0])
ok = len(gpu) == len(cpu) and first <= 1e-5 and worst <= 1e-3
t = f", TF32 allowed: max {max(rel(tf32[s], cpu[s]) for s in cpu):.2e}" if tf32 else ""
with open(os.path.join(d, "parity.tsv"), "w") as f:
    f.write("step\tcpu\tgpu_f32\tgpu_tf32\n")
    for s in sorted(cpu):
        f.write(f"{s}\t{cpu[s]:.7f}\t{gpu[s]:.7f}\t{tf32[s] if tf32 else float('nan'):.7f}\n")
print(("PASS" if ok else "FAIL"),
      f"{len(cpu)} steps, loss {cpu[0]:.5f} -> {cpu[max(cpu)]:.5f}; |gpu-cpu|/cpu: step 0 {first:.2e}, max {worst:.2e}{t}")
EOF
)"
  report "${verdict%% *}" parity "${verdict#* }"
fi

# ---- smoke ----------------------------------------------------------------
run smoke 300 "$bin" train --quiet --set "runtime.backend=\"$backend\"" \
  --set "train.run_dir=\"$work/smoke\"" --set "train.steps=$smoke_steps"
smoke_rc=$?
if [[ $smoke_rc -eq 0 ]]; then
  s="$(summary_of smoke); $(peak_of smoke)"
  if python3 -c 'import re,sys; a,b=map(float,re.search(r"loss (\S+) -> (\S+);",sys.argv[1]).groups()); sys.exit(0 if b<a else 1)' "$s"; then
    report PASS smoke "$s"
  else
    report FAIL smoke "loss did not fall: $s"
  fi
else
  report FAIL smoke "$(why smoke $smoke_rc)"
fi

# ---- bench ----------------------------------------------------------------
python3 - "$work/bench-tokens.json" <<'EOF'
import json, sys
state, rows = 1, []
for _ in range(64):
    row = []
    for _ in range(256):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        row.append((state >> 33) % 32000)
    rows.append(row)
json.dump({"input_ids": rows}, open(sys.argv[1], "w"))
EOF
bench_row=""
for dtype in f32 bf16; do
  cat >"$work/bench-$dtype.toml" <<EOF
[model]
preset = "tiny"
vocab_size = 32000
d_model = 512
layers = 8
heads = 8
kv_heads = 1
head_dim = 64
mlp_dim = 2048
max_seq_len = 256
dtype = "$dtype"
[data]
format = "tokens"
path = "$work/bench-tokens.json"
seq_len = 256
batch_size = 4
[train]
steps = $bench_steps
run_dir = "$work/bench-$dtype"
log_every = 100
peak_flops_per_device = 9.89e14
export_final = false
[runtime]
backend = "$backend"
device_count = 1
EOF
  run "bench-$dtype" 240 "$bin" train --quiet --config "$work/bench-$dtype.toml"
  rc=$?
  if [[ $rc -eq 0 ]]; then
    ours="$(summary_of "bench-$dtype" | sed -E 's/.*median step ([0-9.]+) s.*/\1/') s/step, $(peak_of "bench-$dtype")"
  else
    ours="FAIL ($(why "bench-$dtype" $rc))"
  fi
  JAX_PLATFORMS=cuda run "jax-$dtype" 240 "$jax_python" scripts/bench_jax_step.py --dtype "$dtype" --steps "$bench_steps"
  rc=$?
  if [[ $rc -eq 0 ]]; then
    jax="$(tail -1 "$out/jax-$dtype.log" | awk '{print $2 " s/step (compile " $1 " s)"}')"
  else
    jax="n/a ($(why "jax-$dtype" $rc))"
  fi
  bench_row+="$dtype: meshtrain ${ours}; JAX jit ${jax}. "
done
if [[ "$bench_row" == *"meshtrain FAIL"* ]]; then
  report FAIL bench "$bench_row"
else
  report PASS bench "$bench_row"
fi

# ---- pod: one CUDA node through the coordinator -----------------------------
port=$((29400 + RANDOM % 500))
umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
umask 022
pod_sets=(--set "runtime.backend=\"$backend\"" --set train.steps=20 --set train.log_every=5
  --set runtime.gpu_preallocate=false --set "train.run_dir=\"$work/pod\"")
timeout 240 "$bin" coordinator --quiet --workers 1 --listen "127.0.0.1:$port" \
  --token-file "$work/token" "${pod_sets[@]}" >"$out/pod-coordinator.log" 2>&1 &
coord=$!
sleep 2
timeout 230 "$bin" worker --coordinator "127.0.0.1:$port" --token-file "$work/token" \
  >"$out/pod-worker.log" 2>&1
worker_rc=$?
wait "$coord"
coord_rc=$?
if [[ $coord_rc -eq 0 && $worker_rc -eq 0 ]] && grep -q "job finished" "$out/pod-coordinator.log"; then
  report PASS pod "$(grep 'job finished' "$out/pod-coordinator.log")"
else
  report FAIL pod "coordinator exit $coord_rc, worker exit $worker_rc: $(tail -2 "$out/pod-worker.log" | tr '\n' ' ')"
fi

echo "results in $out/results.txt"
exit "$failed"
