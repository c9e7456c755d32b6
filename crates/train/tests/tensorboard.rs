//! TensorBoard event files: the bytes the writer produces are those of a
//! committed golden file that TensorBoard's own reader was checked to read
//! back as `expected.json` (`scripts/check_tensorboard.py`, run when the
//! golden is made); a training run's events hold exactly the numbers of
//! its `metrics.jsonl`, each step once after a resume; profiling writes a
//! host trace.

use std::collections::BTreeMap;
use std::path::Path;

use train::TrainConfig;
use train::tensorboard::{Decoded, EventWriter, read_dir};

mod common;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tensorboard");

/// Two logged steps as `metrics.jsonl` has them, a config text and an eval.
fn write_sample(path: &Path) {
    let mut w = EventWriter::create_with_wall_time(path, 1_764_500_000.25).unwrap();
    w.preformatted("config", 0, "[train]\nsteps = 2\nrun_dir = \"runs/x\"")
        .unwrap();
    for (step, loss, lr) in [(0u64, 9.0706f32, 3e-4), (1, 8.997_7, 2.9e-4)] {
        let line = serde_json::json!({
            "step": step, "loss": loss, "learning_rate": lr, "grad_norm": 1.234_567_890_123,
            "tokens_per_second": 1_412.345_678_9, "step_time_s": 1.450_123, "mfu": 0.012_345,
            "tokens_by_source": {"shakespeare": 1024 * (step + 1)},
        });
        w.metrics("train", step, &line).unwrap();
    }
    w.scalar("eval/loss/perplexity", 1, 7.5e2).unwrap();
    w.flush().unwrap();
}

/// What a reader sees, as the committed `expected.json` has it.
fn as_json(events: &[(u64, String, Decoded)]) -> serde_json::Value {
    let mut scalars: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    let mut text: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (step, tag, v) in events {
        match v {
            Decoded::Number(x) => scalars
                .entry(tag)
                .or_default()
                .push(serde_json::json!([step, x])),
            Decoded::Text(t) => text
                .entry(tag)
                .or_default()
                .push(serde_json::json!([step, t])),
        }
    }
    serde_json::json!({"scalars": scalars, "text": text})
}

#[test]
fn the_writer_reproduces_the_golden_file_tensorboard_read() {
    let dir = tempfile::tempdir().unwrap();
    let name = "events.out.tfevents.1764500000.golden";
    write_sample(&dir.path().join(name));
    let bytes = std::fs::read(dir.path().join(name)).unwrap();
    let got = as_json(&read_dir(dir.path()).unwrap());
    if std::env::var_os("MESHTRAIN_BLESS").is_some() {
        std::fs::create_dir_all(GOLDEN).unwrap();
        std::fs::write(Path::new(GOLDEN).join(name), &bytes).unwrap();
        let pretty = serde_json::to_string_pretty(&got).unwrap();
        std::fs::write(Path::new(GOLDEN).join("expected.json"), pretty + "\n").unwrap();
    }
    let golden = std::fs::read(Path::new(GOLDEN).join(name)).expect(
        "the golden event file (MESHTRAIN_BLESS=1 writes it; then check it with scripts/check_tensorboard.py)",
    );
    assert!(
        bytes == golden,
        "the event file differs from the golden one"
    );
    // Compared as text: serde_json's float parsing can be one ulp off.
    let expected = std::fs::read_to_string(Path::new(GOLDEN).join("expected.json")).unwrap();
    assert_eq!(serde_json::to_string_pretty(&got).unwrap() + "\n", expected);
    let expected = got;
    // The numbers are the ones given, as float32.
    let loss = &expected["scalars"]["train/loss"];
    assert_eq!(loss[1][1].as_f64().unwrap(), f64::from(8.997_7f32));
    let grad_norm = expected["scalars"]["train/grad_norm"][0][1].as_f64();
    assert_eq!(grad_norm, Some(f64::from(1.234_567_890_123f64 as f32)));
    assert_eq!(
        expected["scalars"]["train/tokens_by_source/shakespeare"][1][1],
        2048.0
    );
    assert!(expected["scalars"].get("train/step").is_none());
    assert_eq!(
        expected["text"]["config"][0][1],
        "    [train]\n    steps = 2\n    run_dir = \"runs/x\"\n"
    );
}

/// `train/<key>` of every line of `metrics.jsonl`, as `(step, tag, value)`,
/// each number parsed exactly from its text (serde_json's own float parsing
/// can be one ulp off) and rounded to float32, as TensorBoard keeps it.
fn metrics_scalars(run: &Path) -> Vec<(u64, String, f64)> {
    let exact = |line: &str, key: &str| -> f64 {
        let at = line.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        let text: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || "-+.eE".contains(*c))
            .collect();
        f64::from(text.parse::<f64>().unwrap() as f32)
    };
    let mut out = Vec::new();
    for l in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let step = v["step"].as_u64().unwrap();
        for (k, x) in v.as_object().unwrap() {
            match x {
                serde_json::Value::Object(m) => out.extend(
                    m.keys()
                        .map(|s| (step, format!("train/{k}/{s}"), exact(l, s))),
                ),
                _ if k != "step" => out.push((step, format!("train/{k}"), exact(l, k))),
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

fn event_scalars(run: &Path) -> Vec<(u64, String, f64)> {
    let mut out: Vec<(u64, String, f64)> = read_dir(&run.join("tensorboard"))
        .unwrap()
        .into_iter()
        .filter_map(|(s, t, v)| match v {
            Decoded::Number(x) => Some((s, t, x)),
            Decoded::Text(_) => None,
        })
        .collect();
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

#[test]
fn a_resumed_run_logs_each_step_once_with_the_metrics_values_and_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 32, 16, 64);
    let text = common::config(dir.path(), &data, 1, "");
    let sets = |extra: &[&str]| -> TrainConfig {
        let mut all = vec![
            "train.steps=6".to_string(),
            "train.checkpoint_every=3".into(),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        TrainConfig::from_toml(&text, "test", &all).unwrap()
    };
    let run = dir.path().join("run");
    train::train(&sets(&["train.profile_steps=[1, 2]"]), false).unwrap();
    let first = event_scalars(&run);
    assert_eq!(first, metrics_scalars(&run));
    assert_eq!(first.iter().filter(|e| e.1 == "train/loss").count(), 6);
    // The host trace of steps 1 and 2 (the CPU plugin has no device profiler).
    let trace: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("profile/host_trace.0.json")).unwrap(),
    )
    .unwrap();
    let spans: Vec<(&str, u64)> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["args"]["step"].as_u64().unwrap(),
            )
        })
        .collect();
    for step in [1, 2] {
        for name in [
            "load batch",
            "transfer batch + launch step",
            "wait for the step",
            "write metrics",
        ] {
            assert!(
                spans.contains(&(name, step)),
                "{name} of step {step} in {spans:?}"
            );
        }
    }
    // `train.checkpoint_copy = "device"` (the default) copies the state
    // when the checkpoint's step is launched.
    assert!(spans.contains(&("checkpoint copy on the devices", 2)));
    assert!(
        !spans
            .iter()
            .any(|(name, _)| *name == "checkpoint copy to host")
    );
    assert!(spans.iter().all(|(_, s)| (1..=2).contains(s)));
    // A crash after the step-3 checkpoint: the run resumes from it and
    // trains steps 3..6 again; no step is logged twice.
    std::fs::remove_dir_all(run.join("checkpoints").join(train::checkpoint::dir_name(6))).unwrap();
    let again = train::train(&sets(&["optimizer.lr=2e-2"]), false).unwrap();
    assert_eq!(again.start_step, 3);
    let resumed = event_scalars(&run);
    assert_eq!(resumed, metrics_scalars(&run));
    assert_eq!(resumed.iter().filter(|e| e.1 == "train/loss").count(), 6);
    // Steps before the resume are the first run's; the others are new.
    assert_eq!(resumed[..resumed.len() / 2], first[..first.len() / 2]);
    assert_ne!(resumed, first);
    let texts: Vec<(u64, String)> = read_dir(&run.join("tensorboard"))
        .unwrap()
        .into_iter()
        .filter(|(_, _, v)| matches!(v, Decoded::Text(_)))
        .map(|(s, t, _)| (s, t))
        .collect();
    let want = [
        (0, "config"),
        (0, "sharding"),
        (3, "config"),
        (3, "sharding"),
    ];
    assert_eq!(texts, want.map(|(s, t)| (s, t.to_string())));
    // `meshtrain eval` of a run's checkpoint adds eval/ at its step; a
    // model outside a run is left alone.
    let ckpt = run.join("checkpoints").join(train::checkpoint::dir_name(6));
    let file = train::tensorboard::record_eval(&ckpt, "loss", &[("perplexity", 12.5)]).unwrap();
    assert!(file.is_some());
    let evals: Vec<_> = read_dir(&run.join("tensorboard"))
        .unwrap()
        .into_iter()
        .filter(|(_, t, _)| t.starts_with("eval/"))
        .collect();
    assert_eq!(
        evals,
        vec![(6, "eval/loss/perplexity".to_string(), Decoded::Number(12.5))]
    );
    assert!(
        train::tensorboard::record_eval(dir.path(), "loss", &[])
            .unwrap()
            .is_none()
    );
}
