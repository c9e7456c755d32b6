//! Emits the Gemma-7B-shaped training step (scanned layers by default,
//! `--unrolled` for 28 unrolled layers) over a 16 x 16 mesh and compiles it
//! on the CPU plugin with 256 virtual devices, printing the time and the
//! per-device memory XLA planned. No buffers are allocated.
//!
//! `cargo run --release -p meshtrain-hlo --example compile_gemma7b [-- --unrolled]`

#[path = "../tests/common/blocks.rs"]
mod blocks;
#[path = "../tests/common/gemma_like.rs"]
mod gemma_like;

use std::time::Instant;

use gemma_like::{Config, GEMMA_7B, build_step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let unrolled = std::env::args().any(|a| a == "--unrolled");
    let cfg = Config {
        scan: !unrolled,
        ..GEMMA_7B
    };
    let t = Instant::now();
    let (program, nodes) = build_step(&cfg)?;
    let mlir = program.to_mlir();
    println!(
        "built and emitted {nodes} nodes ({} KiB) in {:.3} s",
        mlir.len() >> 10,
        t.elapsed().as_secs_f64()
    );
    let client = pjrt::cpu_client(program.num_partitions() as usize)?;
    let t = Instant::now();
    let exe = client.compile(&mlir, &pjrt::CompileOptions::spmd(program.num_partitions()))?;
    let m = exe.executable().memory_stats()?;
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;
    println!(
        "compiled for {} devices in {:.1} s; per device: arguments {:.2} GiB, outputs {:.2} GiB (aliased {:.2} GiB), temporaries {:.2} GiB, peak {:.2} GiB",
        program.num_partitions(),
        t.elapsed().as_secs_f64(),
        gib(m.argument_bytes),
        gib(m.output_bytes),
        gib(m.alias_bytes),
        gib(m.temp_bytes),
        gib(m.peak_bytes)
    );
    Ok(())
}
