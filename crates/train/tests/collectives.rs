//! The start-up report counts collectives per step: one inside the decoder
//! layers' loop (`model.scan_layers`) or the gradient-accumulation loop
//! counts once per iteration, not once per instruction of the program.

use train::TrainConfig;
use train::report::{Collective, ShardingReport};

mod common;

/// The report of a one-step FSDP run over 8 CPU devices with extra `--set`s.
fn report(sets: &[&str]) -> ShardingReport {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 64, 16, 64);
    let text = common::config(dir.path(), &data, 4, "");
    let all: Vec<String> = ["train.steps=1", "runtime.device_count=8", "mesh.fsdp=8"]
        .iter()
        .chain(sets)
        .map(|s| s.to_string())
        .collect();
    let cfg = TrainConfig::from_toml(&text, "test", &all).unwrap();
    let r = train::train(&cfg, false).unwrap().report;
    eprintln!("{sets:?}\n{}\n{:?}", r.render(), r.collectives);
    r
}

fn kind<'a>(r: &'a ShardingReport, k: &str) -> &'a Collective {
    r.collectives.iter().find(|c| c.kind == k).unwrap()
}

/// The tensors of one layer that FSDP shards (so the step gathers them),
/// and their full f32 bytes, from a scanned run's report.
fn sharded_layer_tensors(r: &ShardingReport) -> (u64, u64) {
    let rows = r
        .params
        .iter()
        .filter(|p| p.name.contains("layers.*") && p.shard_shape != p.shape);
    // A scanned run stores them stacked, `[layers, ...]`: one layer's is
    // the rest of the shape.
    rows.fold((0, 0), |(n, b), p| {
        (n + 1, b + 4 * p.shape[1..].iter().product::<usize>() as u64)
    })
}

#[test]
fn scanned_layers_count_their_collectives_once_per_layer() {
    let unrolled = report(&["model.scan_layers=false"]);
    let two = report(&["model.scan_layers=true"]);
    let three = report(&["model.scan_layers=true", "model.layers=3"]);
    for r in [&unrolled, &two, &three] {
        assert!(
            r.collectives.iter().all(|c| !c.lower_bound),
            "{}",
            r.render()
        );
    }
    // One loop body for the layers whatever their number ...
    for k in ["all-gather", "all-reduce"] {
        assert_eq!(
            kind(&two, k).instructions,
            kind(&three, k).instructions,
            "{k}"
        );
    }
    // ... yet a third layer adds its own gathers: each of its sharded
    // tensors gathered a whole number of times (forward, and again in the
    // backward loop), every time in full.
    let (tensors, bytes) = sharded_layer_tensors(&three);
    let (g2, g3) = (kind(&two, "all-gather"), kind(&three, "all-gather"));
    let (dc, db) = (g3.count - g2.count, g3.bytes - g2.bytes);
    assert!(
        dc > 0 && dc % tensors == 0 && db == dc / tensors * bytes,
        "one more layer adds {dc} all-gathers of {db} bytes; a layer has {tensors} sharded tensors of {bytes} bytes"
    );
    // Every gradient is all-reduced once per step, looped or not. Besides
    // the gradients, one f32 partial sum of the gradient norm is reduced per
    // sharded tensor: the scanned run stores a layer's tensors stacked, so
    // it reduces fewer of those scalars (4 bytes per sharded tensor of a
    // layer, for the second layer).
    let (scanned, unrolled_bytes) = (
        kind(&two, "all-reduce").bytes,
        kind(&unrolled, "all-reduce").bytes,
    );
    assert_eq!(
        scanned + 4 * tensors,
        unrolled_bytes,
        "scanned:\n{}\nunrolled:\n{}",
        two.render(),
        unrolled.render()
    );
    assert!(kind(&two, "all-reduce").count > kind(&two, "all-reduce").instructions as u64);
}

#[test]
fn accumulation_counts_the_micro_batch_collectives_per_micro_batch() {
    let one = report(&["model.scan_layers=false"]);
    let four = report(&[
        "model.scan_layers=false",
        "data.batch_size=32",
        "optimizer.accumulation_steps=4",
    ]);
    // The loop body holds the micro-batch's all-to-alls (the same program
    // as the single micro-batch's): 4 runs per step.
    let (a1, a4) = (kind(&one, "all-to-all"), kind(&four, "all-to-all"));
    assert!(
        a1.count > 0 && a4.instructions == a1.instructions,
        "{a1:?} {a4:?}"
    );
    assert_eq!((a4.count, a4.bytes), (4 * a1.count, 4 * a1.bytes));
    // Whatever sits inside the loop runs 3 more times than it is written.
    let mut extra = 0;
    for c in &four.collectives {
        let more = c.count - c.instructions as u64;
        assert_eq!(more % 3, 0, "{c:?}");
        extra += more;
    }
    assert!(extra > 0);
    let text = four.render();
    assert!(
        text.contains("in program") && !text.contains('\u{2265}'),
        "{text}"
    );
}
