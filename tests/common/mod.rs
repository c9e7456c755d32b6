//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test binary uses a subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs meshtrain; the test fails with its stderr unless it succeeded.
pub fn meshtrain_ok(args: &[&str]) -> std::process::Output {
    let out = meshtrain(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshtrain {args:?} failed: {err}");
    out
}

pub fn meshtrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshtrain"))
        .args(args)
        .output()
        .expect("run meshtrain")
}

/// A tiny model on 32 generated rows of 16 tokens, 6 steps, run dir `dir/run`.
pub fn tiny_config(dir: &std::path::Path) -> std::path::PathBuf {
    let rows: Vec<Vec<u32>> = (0..32)
        .map(|r| (0..16).map(|i| ((r * 7 + i * 3) % 60) as u32 + 1).collect())
        .collect();
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        serde_json::json!({ "input_ids": rows }).to_string(),
    )
    .unwrap();
    let cfg = dir.join("tiny.toml");
    let text = format!(
        r#"[model]
preset = "tiny"
vocab_size = 64
d_model = 32
layers = 2
heads = 4
kv_heads = 2
head_dim = 8
mlp_dim = 64
max_seq_len = 32
[data]
format = "tokens"
path = {tokens:?}
seq_len = 16
batch_size = 4
[optimizer]
lr = 1e-2
[train]
steps = 6
log_every = 2
run_dir = {run:?}
peak_flops_per_device = 1e11
"#,
        tokens = tokens.display().to_string(),
        run = dir.join("run").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A child process whose stderr is collected as it comes.
pub struct Proc {
    child: Child,
    err: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtrain"));
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start meshtrain");
        let err = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), err.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc { child, err }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text`; panics with it after `secs`.
    pub fn wait_for(&self, text: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let s = self.stderr();
            if s.contains(text) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "no {text:?} after {secs} s:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit (at most `secs`); the exit status and stderr.
    pub fn finish(mut self, secs: u64) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.stderr());
            }
            if t.elapsed() > Duration::from_secs(secs) {
                let _ = self.child.kill();
                panic!("still running after {secs} s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits for every process to exit, at most `secs` in all; each one's
/// name, exit status and stderr. After `secs` it kills them and panics with
/// every one's stderr (one hung process is explained by the others).
pub fn finish_all(
    mut procs: Vec<(&'static str, Proc)>,
    secs: u64,
) -> Vec<(&'static str, std::process::ExitStatus, String)> {
    let t = Instant::now();
    while procs.iter_mut().any(|(_, p)| p.running()) {
        if t.elapsed() > Duration::from_secs(secs) {
            let said: Vec<String> = procs
                .iter_mut()
                .map(|(name, p)| {
                    let state = if p.running() {
                        "still running"
                    } else {
                        "ended"
                    };
                    format!("--- {name} ({state}):\n{}", p.stderr())
                })
                .collect();
            panic!("not all ended within {secs} s:\n{}", said.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    procs
        .into_iter()
        .map(|(name, p)| {
            let (status, err) = p.finish(1);
            (name, status, err)
        })
        .collect()
}

/// Dropping it kills it (SIGKILL).
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(step, loss)` per line of a metrics file.
pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}
