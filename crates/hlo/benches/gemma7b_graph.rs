//! Builds and emits a Gemma-7B-shaped training step: forward (28 unrolled
//! layers, remat per layer), cross-entropy, backward, AdamW, with FSDP x
//! tensor shardings over a 16 x 16 mesh and donated parameters and moments.
//!
//! `cargo bench -p meshtrain-hlo --bench gemma7b_graph`

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/common/gemma_like.rs"]
mod gemma_like;

use gemma_like::{GEMMA_7B, build_step};

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let (program, nodes) = build_step(&GEMMA_7B).expect("build");
    let text = program.to_mlir();
    println!(
        "gemma-7b step: {nodes} nodes, {} MiB of StableHLO, {} dot_general; first build+emit {:.3} s",
        text.len() >> 20,
        program.op_counts()["dot_general"],
        t.elapsed().as_secs_f64()
    );
    let mut g = c.benchmark_group("gemma7b");
    g.sample_size(10);
    g.bench_function("build_grad_adamw_emit", |bch| {
        bch.iter(|| {
            let (p, _) = build_step(&GEMMA_7B).expect("build");
            p.to_mlir().len()
        })
    });
    g.bench_function("emit_only", |bch| bch.iter(|| program.to_mlir().len()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
