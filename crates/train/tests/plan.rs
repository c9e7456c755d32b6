//! Planning a TPU job on this CPU-only machine: libtpu compiles the real
//! step for a slice; topology names are checked; an over-large batch is a
//! clear "does not fit" answer. Tests that need libtpu say SKIPPED loudly
//! and return when it cannot be fetched, except under CI (`CI` set), where
//! that is a failure. The pod layout of the shipped configs is checked
//! against libtpu's own v5e:16x16 topology and process indices.

use train::TrainConfig;

mod common;

fn have_libtpu() -> bool {
    match pjrt::install::resolve(pjrt::install::Backend::Tpu, None) {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("libtpu could not be installed, and CI must run this check: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: libtpu could not be installed: {e}");
            false
        }
    }
}

fn tiny(sets: &[&str]) -> TrainConfig {
    let dir = std::env::temp_dir();
    let text = common::config(&dir, &dir.join("unused.json"), 1, "");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml(&text, "test", &sets).unwrap()
}

#[test]
fn topology_names_must_be_products() {
    for bad in ["v5e:32x32", "v5e:3x3", "v4:2x2", "v5e16x16", "v5p:16x16"] {
        let e = train::plan::parse_topology(bad).unwrap_err().to_string();
        assert!(e.contains(bad), "{bad}: {e}");
    }
    assert_eq!(train::plan::parse_topology("v5e:16x16").unwrap().1, "16x16");
    assert_eq!(
        train::plan::parse_topology("v5p:4x4x4").unwrap().0.name,
        "v5p"
    );
}

#[test]
fn a_small_step_fits_a_v5e_2x2() {
    if !have_libtpu() {
        return;
    }
    let cfg = tiny(&["model.dtype=\"bf16\"", "data.batch_size=8"]);
    let r = train::plan::plan(&cfg, "v5e:2x2", 1).unwrap();
    assert_eq!((r.devices, r.hosts), (4, 1));
    assert!(r.fits, "{}", r.render());
    let gib = r.hbm_bytes_per_device as f64 / (1u64 << 30) as f64;
    assert!(
        (15.7..15.8).contains(&gib),
        "libtpu's per-chip limit is about 15.75 GiB, got {gib}"
    );
    let json = r.to_json();
    for key in [
        "devices",
        "fits",
        "per_device_peak_bytes",
        "hbm_bytes_per_device",
        "flops_per_step",
    ] {
        assert!(!json[key].is_null(), "{key} missing: {json}");
    }
    let s = r.sharding.as_ref().unwrap();
    assert_eq!(
        s.mesh,
        [
            ("data".to_string(), 1),
            ("fsdp".to_string(), 4),
            ("tensor".to_string(), 1)
        ]
    );
    assert!(r.flops_per_step > 0.0 && r.compute_seconds > 0.0);
    // The step scans its layers on TPU: libtpu states the loop's trip
    // count, so the layer loop's gathers count once per layer and nothing
    // is a lower bound.
    let gathers = s
        .collectives
        .iter()
        .find(|c| c.kind == "all-gather")
        .unwrap();
    assert!(
        s.collectives.iter().all(|c| !c.lower_bound) && gathers.count > gathers.instructions as u64,
        "{}",
        r.render()
    );
}

#[test]
fn an_over_large_batch_is_a_clear_does_not_fit() {
    if !have_libtpu() {
        return;
    }
    // 4096 sequences of 64 tokens over vocab 256000 on 4 chips: logits alone are ~64 GiB per chip.
    let cfg = tiny(&[
        "model.vocab_size=256000",
        "data.batch_size=4096",
        "data.seq_len=64",
        "model.dtype=\"bf16\"",
    ]);
    let r = train::plan::plan(&cfg, "v5e:2x2", 1).unwrap();
    assert!(!r.fits);
    let text = r.render();
    assert!(
        text.contains("does not fit: needs")
            && text.contains("has 15.75 GiB")
            && text.contains("mesh.fsdp"),
        "{text}"
    );
}

/// The shipped pod configs: both must fit a v5e 16x16 slice. About a
/// minute each on 2 cores (libtpu compiles the real 256-chip step). The
/// 7B is planned again with 4 layers: with its layers scanned over stacked
/// state, libtpu's optimized program holds about the same collective
/// instructions for 4 layers as for 28 (what runs 7x as often is the loop
/// body). The two compile times and their ratio are printed (timings are
/// not asserted; the README records them).
#[test]
fn shipped_gemma_configs_fit_a_v5e_16x16() {
    if !have_libtpu() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut reports = Vec::new();
    for (name, sets) in [
        ("gemma-2b", vec![]),
        ("gemma-7b", vec![]),
        ("gemma-7b", vec!["model.layers=4".to_string()]),
    ] {
        let path = root.join(format!("configs/{name}.toml"));
        let cfg = TrainConfig::load(Some(&path), &sets).unwrap();
        let r = train::plan::plan(&cfg, "v5e:16x16", 1).unwrap();
        eprintln!("{name} {sets:?}: {}", r.render());
        assert_eq!((r.devices, r.hosts), (256, 64));
        assert!(r.fits, "{name} does not fit: {}", r.render());
        reports.push(r);
    }
    let (full, four) = (&reports[1], &reports[2]);
    eprintln!(
        "gemma-7b on v5e:16x16 compiles in {:.1} s with 28 layers, {:.1} s with 4: {:.2}x",
        full.compile_seconds,
        four.compile_seconds,
        full.compile_seconds / four.compile_seconds
    );
    let collectives =
        |r: &train::plan::PlanReport| r.sharding.as_ref().unwrap().collectives.clone();
    let (c28, c4) = (collectives(full), collectives(four));
    assert_eq!(c28.len(), c4.len(), "{c28:?} vs {c4:?}");
    // XLA's loop passes may peel an iteration's collective or two out of
    // the loop, depending on the trip count; unrolled, the 28 layers would
    // hold 7x the 4 layers' instructions.
    for (a, b) in c28.iter().zip(&c4) {
        assert_eq!(a.kind, b.kind);
        assert!(a.instructions <= b.instructions + 4, "{c28:?} vs {c4:?}");
    }
    let gathers =
        |c: &[train::report::Collective]| c.iter().find(|c| c.kind == "all-gather").unwrap().count;
    assert!(gathers(&c28) > 5 * gathers(&c4), "{c28:?} vs {c4:?}");
}

/// The shipped 7B fine-tuning config fits a v5e-16 (4x4) in bf16 and does not fit a v5e-8
/// (2x4, with `mesh.fsdp = 8`). 25 and 7 minutes of compiling on 2 cores, too
/// slow for every CI run: `cargo test -p meshtrain-train --test plan -- --ignored`.
#[test]
#[ignore = "compiles the 7B twice (about 30 min on 2 cores): run with -- --ignored"]
fn gemma_7b_sft_fits_a_v5e_16_and_not_a_v5e_8() {
    if !have_libtpu() {
        return;
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/gemma-7b-sft.toml");
    let cfg = TrainConfig::load(Some(&path), &[]).unwrap();
    let r = train::plan::plan(&cfg, "v5e:4x4", 1).unwrap();
    eprintln!("gemma-7b-sft on v5e:4x4: {}", r.render());
    assert!(r.fits, "{}", r.render());
    let cfg = TrainConfig::load(Some(&path), &["mesh.fsdp=8".into()]).unwrap();
    let r = train::plan::plan(&cfg, "v5e:2x4", 1).unwrap();
    eprintln!("gemma-7b-sft on v5e:2x4: {}", r.render());
    assert!(!r.fits, "{}", r.render());
}

#[test]
fn two_slices_put_the_data_axis_across_them() {
    if !have_libtpu() {
        return;
    }
    let cfg = tiny(&[
        "model.dtype=\"bf16\"",
        "mesh.data=2",
        "mesh.fsdp=4",
        "runtime.device_count=8",
    ]);
    let r = train::plan::plan(&cfg, "v5e:2x2", 2).unwrap();
    assert_eq!((r.devices, r.hosts, r.slices), (8, 2, 2));
    assert!(r.fits, "{}", r.render());
    let s = r.sharding.as_ref().unwrap();
    // data index 0 holds slice 0's chips (ids 1000xx), data index 1 slice 1's.
    assert!(
        s.device_order[..4].iter().all(|&id| id < 200_000)
            && s.device_order[4..].iter().all(|&id| id >= 200_000),
        "{:?}",
        s.device_order
    );
    assert_eq!(
        r.cross_slice_bytes_per_chip, s.param_bytes_per_device,
        "2 slices: 2 (S-1)/S = 1 x the gradient shard"
    );
    assert!(r.render().contains("across slices"));
    let e = train::plan::plan(
        &tiny(&[
            "mesh.data=1",
            "mesh.fsdp=8",
            "runtime.device_count=8",
            "data.batch_size=8",
        ]),
        "v5e:2x2",
        2,
    )
    .unwrap_err();
    assert!(e.to_string().contains("multiple of --slices 2"), "{e}");
}

#[test]
fn a_device_count_other_than_the_topologys_is_one_clear_refusal() {
    if !have_libtpu() {
        return;
    }
    let cfg = tiny(&["runtime.device_count=4", "mesh.data=2"]);
    let e = train::plan::plan(&cfg, "v5e:2x2", 2)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "plan: runtime.device_count: 4, but there are 8 chips in 2 slices of v5e:2x2; leave \
         runtime.device_count unset (or 0) to plan for all of them"
    );
}

#[test]
fn every_generation_and_single_host_shapes_compile() {
    if !have_libtpu() {
        return;
    }
    for (topology, chips, hosts) in [
        ("v5e:1x1", 1, 1),
        ("v5e:2x4", 8, 1),
        ("v6e:2x2", 4, 1),
        ("v5p:2x2x1", 4, 1),
    ] {
        let cfg = tiny(&["model.dtype=\"bf16\"", "data.batch_size=8", "mesh.fsdp=-1"]);
        let r = train::plan::plan(&cfg, topology, 1).unwrap();
        assert_eq!((r.devices, r.hosts), (chips, hosts), "{topology}");
        assert!(r.fits, "{topology}: {}", r.render());
    }
}

/// The 64 hosts of a v5e-256 slice under a shipped config: the rows of the
/// global batch they load partition it (hosts of one tensor group load the
/// same rows, any two others disjoint ones, all rows loaded), and the
/// boxes they write to a checkpoint tile every tensor exactly once.
fn pod_layout_tiles(config: &str, slices: usize) {
    if !have_libtpu() {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(config);
    let (_, topo) = train::plan::open_topology("v5e:16x16", slices).unwrap();
    let devices = topo.devices().unwrap();
    let n = devices.len();
    assert_eq!(n, 256 * slices);
    // The shipped configs leave the device count to the machine.
    let cfg = TrainConfig::load(Some(&path), &[])
        .unwrap()
        .with_device_count(n, "the topology", config)
        .unwrap();
    let (plan, params, batch) = train::step::slots_for(&cfg).unwrap();
    let layout = train::host::JobLayout::new(&plan, &devices, cfg.tensor_along(), |d| {
        d.info.process_index as usize
    })
    .unwrap();
    assert_eq!(layout.hosts, 64 * slices, "{config}");
    let rows: Vec<Vec<usize>> = (0..layout.hosts)
        .map(|h| layout.batch_rows(&plan, &batch[0], h))
        .collect();
    let mut seen = vec![None::<&Vec<usize>>; cfg.data.batch_size];
    for r in &rows {
        assert!(!r.is_empty());
        for &row in r {
            match seen[row] {
                None => seen[row] = Some(r),
                Some(other) => {
                    assert_eq!(other, r, "{config}: hosts share row {row} but not all rows")
                }
            }
        }
    }
    assert!(
        seen.iter().all(Option::is_some),
        "{config}: every row is loaded"
    );
    for slot in &params {
        let boxes: Vec<Vec<std::ops::Range<usize>>> = (0..n)
            .filter(|&p| layout.writes_box(&plan, slot, p))
            .map(|p| train::shard::shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p))
            .collect();
        let volume: usize = boxes
            .iter()
            .map(|b| b.iter().map(|r| r.len()).product::<usize>())
            .sum();
        assert_eq!(
            volume,
            slot.shape.iter().product::<usize>(),
            "{config}: {}",
            slot.name
        );
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[..i] {
                assert!(
                    train::shard::overlap(a, b).is_none(),
                    "{config}: {} boxes overlap",
                    slot.name
                );
            }
        }
    }
}

#[test]
fn gemma_2b_on_a_v5e_256_tiles_rows_and_checkpoint_boxes_over_64_hosts() {
    pod_layout_tiles("gemma-2b.toml", 1);
}

#[test]
fn gemma_7b_on_a_v5e_256_tiles_rows_and_checkpoint_boxes_over_64_hosts() {
    pod_layout_tiles("gemma-7b.toml", 1);
}

#[test]
fn gemma_2b_on_two_v5e_256_tiles_rows_and_checkpoint_boxes_over_128_hosts() {
    pod_layout_tiles("gemma-2b-2pods.toml", 2);
}
