#!/usr/bin/env bash
# scripts/fuzz.sh TARGET SECONDS [libFuzzer options...]
#
# Runs one fuzz target (fuzz/fuzz_targets/TARGET.rs; `scripts/fuzz.sh list`
# names them) under libFuzzer for SECONDS, on the stable toolchain: the
# fuzz/ workspace is built with sanitizer-coverage instrumentation
# (inline 8-bit counters, PC table, compare tracing) and `--cfg fuzzing`,
# as cargo-fuzz does on nightly. It starts from the committed corpus
# fuzz/corpus/TARGET and grows a scratch corpus in fuzz/work/TARGET;
# crashes, timeouts and out-of-memory inputs land in fuzz/artifacts/TARGET.
# Copy each one into fuzz/corpus/TARGET once fixed: `cargo test -p
# meshtrain-fuzz-targets` replays the corpus without libFuzzer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' "$root/fuzz/Cargo.toml" | grep -v '^meshtrain-fuzz$' || true)
if [[ $# -lt 1 || $1 == list ]]; then
    echo "usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer options]; targets:" $targets
    exit $(( $# < 1 ))
fi
target=$1
secs=${2:?SECONDS}
shift 2
grep -qx "$target" <<<"$targets" || { echo "unknown target $target; targets:" $targets >&2; exit 2; }
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
cargo build --release --manifest-path "$root/fuzz/Cargo.toml" --target "$host" --bin "$target"
work="$root/fuzz/work/$target"
artifacts="$root/fuzz/artifacts/$target"
mkdir -p "$work" "$artifacts" "$root/fuzz/corpus/$target"
# 2 GiB of memory, 60 s per input (wall clock: generous on a loaded machine), inputs up to 128 KiB: a bigger
# allocation or a slower input is a finding.
exec "$root/fuzz/target/$host/release/$target" \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=60 \
    -max_len=131072 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$@" "$work" "$root/fuzz/corpus/$target"
