//! Builds and emits a Gemma-7B-shaped training step: forward (28 layers,
//! unrolled with remat per layer, or scanned), cross-entropy, backward,
//! AdamW, with FSDP x tensor shardings over a 16 x 16 mesh and donated
//! parameters and moments.
//!
//! `cargo bench -p meshtrain-hlo --bench gemma7b_graph`

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/common/blocks.rs"]
mod blocks;
#[path = "../tests/common/gemma_like.rs"]
mod gemma_like;

use gemma_like::{Config, GEMMA_7B, build_step};

fn bench(c: &mut Criterion) {
    let scanned = Config {
        scan: true,
        ..GEMMA_7B
    };
    for (name, cfg) in [("unrolled", &GEMMA_7B), ("scanned", &scanned)] {
        let t = Instant::now();
        let (program, nodes) = build_step(cfg).expect("build");
        let text = program.to_mlir();
        println!(
            "gemma-7b step, {name} layers: {nodes} nodes, {:.1} MiB of StableHLO, {} top-level dot_general; first build+emit {:.3} s",
            text.len() as f64 / (1 << 20) as f64,
            program.op_counts().get("dot_general").copied().unwrap_or(0),
            t.elapsed().as_secs_f64()
        );
    }
    let mut g = c.benchmark_group("gemma7b");
    g.sample_size(10);
    for (name, cfg) in [("unrolled", &GEMMA_7B), ("scanned", &scanned)] {
        g.bench_function(format!("build_grad_adamw_emit_{name}"), |bch| {
            bch.iter(|| {
                let (p, _) = build_step(cfg).expect("build");
                p.to_mlir().len()
            })
        });
    }
    let (program, _) = build_step(&GEMMA_7B).expect("build");
    g.bench_function("emit_only_unrolled", |bch| {
        bch.iter(|| program.to_mlir().len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
