//! The README's commands as a new user first runs them: what each says
//! when it cannot do what was asked, and the defaults that keep one try-out
//! from running into another. Messages are checked word for word.

use std::path::Path;
use std::process::Command;

mod common;
use common::{meshtrain, meshtrain_ok};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_bad_set_value_is_one_line_naming_the_key_once() {
    let out = meshtrain(&["train", "--set", "train.steps=-1"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "meshtrain: error: --set: train.steps: invalid value: integer `-1`, expected a whole \
         number >= 0\n"
    );
    let out = meshtrain(&["train", "--set", "model.dtype=f16"]);
    assert_eq!(
        stderr(&out),
        "meshtrain: error: --set: model.dtype: \"f16\": expected \"f32\" or \"bf16\"\n"
    );
}

#[test]
fn eval_of_a_directory_that_is_no_model_says_what_it_expected() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("rows.jsonl");
    std::fs::write(&tokens, "[1, 2, 3]\n").unwrap();
    let eval = |model: &Path| {
        let out = meshtrain(&[
            "eval",
            "--checkpoint",
            model.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        stderr(&out)
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(
        eval(&empty),
        format!(
            "meshtrain: error: {}: neither a Hugging Face model directory (no config.json) nor a \
             meshtrain checkpoint (no manifest.json); expected e.g. a run's final/ or \
             run_dir/checkpoints/step_N\n",
            empty.display()
        )
    );
    let missing = dir.path().join("missing");
    assert_eq!(
        eval(&missing),
        format!(
            "meshtrain: error: {}: no such directory; expected a Hugging Face model directory \
             (config.json and *.safetensors, e.g. a run's final/) or a meshtrain checkpoint \
             (run_dir/checkpoints/step_N)\n",
            missing.display()
        )
    );
    // A run directory, and its checkpoints/: pointed at the models inside.
    let run = dir.path().join("run");
    for d in [
        "final",
        "checkpoints/step_00000002",
        "checkpoints/step_00000004",
    ] {
        std::fs::create_dir_all(run.join(d)).unwrap();
    }
    std::fs::write(run.join("final/config.json"), "{}").unwrap();
    let newest = run.join("checkpoints/step_00000004");
    assert_eq!(
        eval(&run),
        format!(
            "meshtrain: error: {}: not a model but a run directory: give its exported model {} or \
             a checkpoint (newest: {})\n",
            run.display(),
            run.join("final").display(),
            newest.display()
        )
    );
    assert_eq!(
        eval(&run.join("checkpoints")),
        format!(
            "meshtrain: error: {}: not a model but a directory of checkpoints: give a checkpoint \
             (newest: {})\n",
            run.join("checkpoints").display(),
            newest.display()
        )
    );
    // `export` takes checkpoints only, and says which.
    let out = meshtrain(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--to",
        "hf",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(
        stderr(&out),
        format!(
            "meshtrain: error: checkpoint {}: not a meshtrain checkpoint (no manifest.json); a run \
             directory: give a checkpoint (newest: {})\n",
            run.display(),
            newest.display()
        )
    );
}

#[test]
fn the_plugins_info_logs_stay_out_of_the_way() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtrain"))
        .args(["devices", "--device-count", "2"])
        .env_remove("TF_CPP_MIN_LOG_LEVEL")
        .env_remove("MESHTRAIN_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        stderr(&out),
        "",
        "nothing on stderr but warnings and errors"
    );
}

#[test]
fn tokenizer_encode_json_makes_an_eval_rows_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tokenizer = root.join("configs/data/shakespeare-bpe8k.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshtrain"))
        .args(["tokenizer", "encode", "--json", "--bos", "--tokenizer"])
        .arg(&tokenizer)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"To be, or not to be, that is the question.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, &out.stdout).unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(data::read_token_rows(&rows, 512).unwrap(), [ids]);
}

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

/// `plan --slices N` on a one-slice config with no device count: the
/// topology gives the count, the slices go on `mesh.data`, the batch is
/// scaled (or kept with `--keep-batch`), and the plan says so first.
#[test]
fn plan_slices_a_one_slice_config_without_overrides() {
    if !have_libtpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let base = [
        "plan",
        "--config",
        cfg,
        "--topology",
        "v5e:2x2",
        "--slices",
        "2",
    ];
    let out = meshtrain_ok(&[&base[..], &["--json", "--set", "model.dtype=bf16"]].concat());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["devices"].as_u64(), doc["slices"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(doc["fits"], true);
    assert_eq!(
        doc["sharding"]["mesh"],
        serde_json::json!({"data": 2, "fsdp": 4, "tensor": 1})
    );
    assert_eq!(
        stderr(&out),
        "--slices 2: mesh.data = 2 (one data replica per slice); data.batch_size = 8 (4 per \
         slice, as the config gives; --keep-batch keeps 4 for the job)\n",
        "the note, and no plugin noise"
    );
    // Kept, 4 rows do not split over 8 replicas: said before any compile.
    let out = meshtrain(&[&base[..], &["--keep-batch"]].concat());
    assert!(!out.status.success());
    assert_eq!(
        stdout(&out),
        "--slices 2: mesh.data = 2 (one data replica per slice); data.batch_size = 4 \
         (--keep-batch: the job's batch, split over the slices)\n"
    );
    assert_eq!(
        stderr(&out),
        "meshtrain: error: data.batch_size / optimizer.accumulation_steps = 4 does not divide \
         over data*fsdp = 8\n"
    );
}

/// `scripts/launch-local.sh 2` after the smoke run: its own run directory,
/// and a second launch says there is nothing left instead of a NaN loss.
#[test]
fn launch_local_gets_its_own_run_dir_and_says_when_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/launch-local.sh");
    // A smaller smoke model, 2 steps: the launch is what is tested.
    let small = [
        "--",
        "--set",
        "train.steps=2",
        "--set",
        "model.layers=1",
        "--set",
        "data.seq_len=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "train.export_final=false",
    ];
    let launch = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new("bash")
            .arg(&script)
            .arg("2")
            .args(small)
            .current_dir(dir.path())
            .env("MESHTRAIN_BIN", env!("CARGO_BIN_EXE_meshtrain"))
            .env("PORT", port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let first = launch();
    assert!(
        first.starts_with("job finished: ")
            && first.contains("final loss")
            && !first.contains("NaN"),
        "{first}"
    );
    let run = dir.path().join("runs/smoke-2p");
    assert!(run.join("checkpoints/step_00000002").is_dir(), "{first}");
    assert!(!dir.path().join("runs/smoke").exists());
    assert_eq!(
        launch(),
        "job finished: nothing to train: the checkpoints in runs/smoke-2p already reach \
         train.steps = 2 (raise train.steps to go on, or give another train.run_dir to start \
         over)\n"
    );
}

/// The absl log line format of the plugins: `I0000 00:00:...` (or W, E, F).
fn is_absl_line(line: &str) -> bool {
    let b = line.as_bytes();
    line.contains("absl::InitializeLog")
        || (b.len() > 6
            && b"IWEF".contains(&b[0])
            && b[1..5].iter().all(u8::is_ascii_digit)
            && b[5] == b' ')
}

#[test]
fn train_shows_only_meshtrains_lines_unless_meshtrain_log_asks() {
    let dir = tempfile::tempdir().unwrap();
    let train = |run: &str, log: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtrain"));
        cmd.args([
            "train",
            "--set",
            "train.steps=2",
            "--set",
            "train.profile_steps=[0, 1]",
        ])
        .args([
            "--set",
            &format!("train.run_dir={}", dir.path().join(run).display()),
        ])
        .env_remove("TF_CPP_MIN_LOG_LEVEL")
        .env_remove("TPU_STDERR_LOG_LEVEL")
        .env_remove("MESHTRAIN_LOG");
        if let Some(l) = log {
            cmd.env("MESHTRAIN_LOG", l);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let quiet = train("quiet", None);
    assert!(!quiet.lines().any(is_absl_line), "{quiet}");
    assert!(quiet.contains("no PJRT profiler extension"), "{quiet}");
    // MESHTRAIN_LOG=info brings the plugin's INFO lines back.
    let loud = train("loud", Some("info"));
    assert!(
        loud.contains("cpu_device_count set via create_options"),
        "{loud}"
    );
    assert!(loud.lines().any(is_absl_line), "{loud}");
}
