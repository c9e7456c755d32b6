#!/usr/bin/env bash
# Writes crates/train/tests/golden/checkpoint_v2: a checkpoint (step 2 of 4)
# and the losses of the run that wrote it, made by a meshtrain binary from
# before `model.scan_layers` (the layers unrolled), so that
# crates/train/tests/scan.rs can check that such checkpoints still restore
# into a scanned run. The fixture was made with commit f62d6d0:
#
#   git worktree add /tmp/old f62d6d0 && (cd /tmp/old && cargo build -p meshtrain)
#   scripts/gen_old_checkpoint.sh /tmp/old/target/debug/meshtrain
#
# The tokens file and the config are those of crates/train/tests/common
# (tokens_file(dir, 64, 16, 64), config(dir, data, 1, "")) with
# data.shuffle = true, train.steps = 4 and train.checkpoint_every = 2.
set -euo pipefail
bin=${1:?usage: gen_old_checkpoint.sh PATH_TO_OLD_MESHTRAIN}
out=$(cd "$(dirname "$0")/.." && pwd)/crates/train/tests/golden/checkpoint_v2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/tokens.json" <<'PY'
import json, sys
M = (1 << 64) - 1
state, data = 7, []
for r in range(64):
    row = []
    for i in range(16):
        state = (state * 6364136223846793005 + 1442695040888963407) & M
        row.append((state >> 33) % 64 if (state >> 60) == 0 else (r + i * 3) % 64)
    data.append(row)
open(sys.argv[1], "w").write(json.dumps({"input_ids": data}, separators=(",", ":")))
PY
cat >"$work/c.toml" <<TOML
[model]
preset = "tiny"
vocab_size = 64
d_model = 32
layers = 2
heads = 4
kv_heads = 1
head_dim = 8
mlp_dim = 64
max_seq_len = 64
seed = 3

[data]
format = "tokens"
path = "$work/tokens.json"
seq_len = 16
batch_size = 8
shuffle = true

[optimizer]
lr = 1e-2
warmup_steps = 2
schedule = "cosine"
weight_decay = 0.1
clip_grad_norm = 1.0

[train]
steps = 4
run_dir = "$work/run"
log_every = 1
peak_flops_per_device = 1e11
export_final = false
checkpoint_every = 2
TOML
"$bin" train --config "$work/c.toml" --quiet
rm -rf "$out/step_00000002"
mkdir -p "$out"
cp -a "$work/run/checkpoints/step_00000002" "$out/"
python3 - "$work/run/metrics.jsonl" "$out/losses.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = {"note": "losses of the run that wrote step_00000002 (meshtrain f62d6d0, before model.scan_layers: layers unrolled), all 4 steps; made by scripts/gen_old_checkpoint.sh",
       "losses": [[r["step"], r["loss"]] for r in rows]}
open(sys.argv[2], "w").write(json.dumps(out) + "\n")
PY
