//! The TPU pod and GPU node launch scripts (`scripts/launch-tpu-pod.sh`,
//! `scripts/launch-gpu-nodes.sh`). Dry runs: the exact scp/ssh lines for a
//! 2-slice v5e-256-shaped job (2 x 64 hosts) and for GPU nodes, every host
//! once, and the bad-usage messages. Real runs on emulated hosts: `ssh` and
//! `scp` replaced by scripts that run the command here (each host a home
//! directory), so a CPU job really trains through the GPU launcher, and a
//! host that cannot be reached stops the whole TPU launch. Needs only bash.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::{losses, tiny_config};

const SSH: &str = "ssh -tt -o BatchMode=yes";
const SCP: &str = "scp -p -q -o BatchMode=yes";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Runs a launch script (dry runs only: it must end by itself).
fn launch(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name)).args(args);
    cmd.env_remove("MESHTRAIN_SSH").env_remove("MESHTRAIN_SCP");
    cmd.env_remove("MESHTRAIN_BIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes a hosts file.
fn hosts_file(dir: &Path, name: &str, lines: &[String]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p.display().to_string()
}

fn tpu_host(s: usize, w: usize) -> String {
    format!("t1v-s{s}-w{w}")
}

fn tpu_addr(s: usize, w: usize) -> String {
    format!("10.0.{s}.{w}")
}

/// The remote worker command's start: wait for the coordinator's port.
fn wait_for(coord: &str, port: u16) -> String {
    format!(
        "w=0; until (: </dev/tcp/{coord}/{port}) 2>/dev/null; do w=$((w+1)); if [ $w -ge 120 ]; \
         then echo \"coordinator {coord}:{port} not reachable after 120 s\" >&2; exit 1; fi; \
         sleep 1; done; "
    )
}

#[test]
fn tpu_two_slices_plan_every_host_once_with_its_slice_env() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = (0..2)
        .map(|s| {
            let mut lines = vec![format!("# slice {s} of a v5e-256 x 2 job")];
            lines.extend((0..64).map(|w| format!("{} {}", tpu_host(s, w), tpu_addr(s, w))));
            hosts_file(dir.path(), &format!("slice{s}.hosts"), &lines)
        })
        .collect();
    let token = dir.path().join("job.token");
    std::fs::write(&token, "secret").unwrap();
    let token = token.display().to_string();
    let out = launch(
        "launch-tpu-pod.sh",
        &[
            "--config",
            "configs/gemma-2b.toml",
            "--set",
            "mesh.data=2",
            "--slices",
            "2",
            "--token-file",
            &token,
            "--dry-run",
            &files[0],
            &files[1],
        ],
        &[("MESHTRAIN_BIN", "/opt/meshtrain/bin/meshtrain")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "# TPU job: 2 slice(s) x 64 hosts = 128 workers, coordinator 10.0.0.0:29400"
    );
    let cmds: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(cmds.len(), 128 + 1 + 128, "{stdout}");

    // The token goes to every host, slice by slice, first.
    for (i, line) in cmds[..128].iter().enumerate() {
        let (s, w) = (i / 64, i % 64);
        assert_eq!(
            *line,
            format!("{SCP} {token} {}:.meshtrain-job.token", tpu_host(s, w))
        );
    }
    // Then the coordinator, once, on slice 0's first host.
    assert_eq!(
        cmds[128],
        format!(
            "{SSH} t1v-s0-w0 'exec /opt/meshtrain/bin/meshtrain coordinator \
             --config configs/gemma-2b.toml --set mesh.data=2 --workers 128 \
             --listen 0.0.0.0:29400 --token-file ~/.meshtrain-job.token --quiet'"
        )
    );
    assert_eq!(
        stdout.matches(" coordinator --config ").count(),
        1,
        "{stdout}"
    );
    // Then one worker per host, with its slice's environment.
    let names = |s: usize| {
        (0..64)
            .map(|w| tpu_addr(s, w))
            .collect::<Vec<_>>()
            .join(",")
    };
    let worker = |s: usize, w: usize| {
        format!(
            "{SSH} {} '{}exec env TPU_WORKER_ID={w} TPU_WORKER_HOSTNAMES={} \
             MEGASCALE_COORDINATOR_ADDRESS=10.0.0.0:8080 MEGASCALE_NUM_SLICES=2 \
             MEGASCALE_SLICE_ID={s} MEGASCALE_PORT=8080 /opt/meshtrain/bin/meshtrain worker \
             --coordinator 10.0.0.0:29400 --token-file ~/.meshtrain-job.token'",
            tpu_host(s, w),
            wait_for("10.0.0.0", 29400),
            names(s)
        )
    };
    for (s, w) in [(0, 0), (0, 1), (0, 63), (1, 0), (1, 17), (1, 63)] {
        assert_eq!(cmds[129 + s * 64 + w], worker(s, w), "slice {s} worker {w}");
    }
    // Every host: exactly one scp and one worker, with its own ids.
    for s in 0..2 {
        for w in 0..64 {
            let host = format!(" {} ", tpu_host(s, w));
            let mine: Vec<&&str> = cmds.iter().filter(|l| l.contains(&host)).collect();
            let workers: Vec<&&&str> = mine.iter().filter(|l| l.contains(" worker ")).collect();
            assert_eq!(workers.len(), 1, "{host}: {mine:?}");
            assert!(
                workers[0].contains(&format!(" TPU_WORKER_ID={w} "))
                    && workers[0].contains(&format!(" MEGASCALE_SLICE_ID={s} ")),
                "{}",
                workers[0]
            );
            let scps = cmds
                .iter()
                .filter(|l| l.ends_with(&format!(" {}:.meshtrain-job.token", tpu_host(s, w))))
                .count();
            assert_eq!(scps, 1, "{host}");
        }
    }
}

#[test]
fn tpu_one_slice_has_no_megascale_env() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..64).map(|w| format!("me@tpu-w{w}")).collect();
    let file = hosts_file(dir.path(), "slice.hosts", &lines);
    let out = launch(
        "launch-tpu-pod.sh",
        &[
            "--dry-run",
            "--config",
            "/shared/gemma-2b.toml",
            "--port",
            "29500",
            &file,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("MEGASCALE"), "{stdout}");
    let names = (0..64)
        .map(|w| format!("tpu-w{w}"))
        .collect::<Vec<_>>()
        .join(",");
    // `user@` is for ssh only; the other hosts get the bare name.
    let expected = format!(
        "{SSH} me@tpu-w5 '{}exec env TPU_WORKER_ID=5 TPU_WORKER_HOSTNAMES={names} \
         ~/meshtrain worker --coordinator tpu-w0:29500 --token-file ~/.meshtrain-job.token'",
        wait_for("tpu-w0", 29500)
    );
    assert!(stdout.lines().any(|l| l == expected), "{stdout}");
    // Without --token-file a fresh token is made at launch; the plan says so.
    assert!(
        stdout.contains("\n# <new-token-file>: a fresh random token (mode 600) made at launch\n")
            && stdout.contains(&format!(
                "\n{SCP} '<new-token-file>' me@tpu-w63:.meshtrain-job.token\n"
            )),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" worker --coordinator ").count(), 64);
}

#[test]
fn gpu_nodes_plan_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let file = hosts_file(
        dir.path(),
        "gpu.hosts",
        &[
            "# four 8-GPU nodes".into(),
            "gpu-a 192.168.1.10".into(),
            "".into(),
            "ubuntu@gpu-b   # address: gpu-b".into(),
            "gpu-c".into(),
            "gpu-d 192.168.1.13".into(),
        ],
    );
    let out = launch(
        "launch-gpu-nodes.sh",
        &[
            "--config",
            "job.toml",
            "--set",
            "train.run_dir=\"/mnt/runs/a\"",
            "--env",
            "NCCL_SOCKET_IFNAME=eth0",
            "--env",
            "NCCL_DEBUG=INFO",
            "--workdir",
            "/mnt/job",
            "--port",
            "29401",
            "--dry-run",
            &file,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let worker = |host: &str| {
        format!(
            "{SSH} {host} '{}cd /mnt/job && exec env NCCL_SOCKET_IFNAME=eth0 NCCL_DEBUG=INFO \
             ~/meshtrain worker --coordinator 192.168.1.10:29401 --token-file ~/.meshtrain-job.token'",
            wait_for("192.168.1.10", 29401)
        )
    };
    let mut expected = vec![
        "# GPU job: 4 nodes, coordinator 192.168.1.10:29401".to_string(),
        "# <new-token-file>: a fresh random token (mode 600) made at launch".into(),
    ];
    for h in ["gpu-a", "ubuntu@gpu-b", "gpu-c", "gpu-d"] {
        expected.push(format!("{SCP} '<new-token-file>' {h}:.meshtrain-job.token"));
    }
    // The --set value has quotes: quoted for the remote shell, then again
    // as part of the one ssh argument.
    expected.push(format!(
        "{SSH} gpu-a 'cd /mnt/job && exec ~/meshtrain coordinator --config job.toml \
         --set '\\''train.run_dir=\"/mnt/runs/a\"'\\'' --workers 4 --listen 0.0.0.0:29401 \
         --token-file ~/.meshtrain-job.token --quiet'"
    ));
    for h in ["gpu-a", "ubuntu@gpu-b", "gpu-c", "gpu-d"] {
        expected.push(worker(h));
    }
    assert_eq!(text(&out.stdout), expected.join("\n") + "\n");
}

#[test]
fn bad_usage_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let slice = |name: &str, n: usize| {
        let lines: Vec<String> = (0..n).map(|w| format!("{name}-w{w}")).collect();
        hosts_file(d, &format!("{name}.hosts"), &lines)
    };
    let (a, b, short) = (slice("a", 4), slice("b", 4), slice("short", 3));
    let empty = hosts_file(d, "empty.hosts", &["# nothing here".into(), "".into()]);
    let dup = hosts_file(d, "dup.hosts", &["x".into(), "y".into(), "x".into()]);
    let junk = hosts_file(d, "junk.hosts", &["x 10.0.0.1 extra".into()]);
    let missing = d.join("no-such.hosts").display().to_string();
    let tpu = "launch-tpu-pod.sh";
    let gpu = "launch-gpu-nodes.sh";
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            tpu,
            vec!["--config", "c.toml"],
            "no hosts file given".into(),
        ),
        (
            gpu,
            vec!["--config", "c.toml"],
            "no hosts file given".into(),
        ),
        (
            tpu,
            vec!["--config", "c.toml", &missing],
            format!("hosts file {missing}: not found"),
        ),
        (
            gpu,
            vec!["--config", "c.toml", &missing],
            format!("hosts file {missing}: not found"),
        ),
        (
            tpu,
            vec!["--config", "c.toml", &empty],
            format!("hosts file {empty} lists no hosts"),
        ),
        (
            gpu,
            vec!["--config", "c.toml", &empty],
            format!("hosts file {empty} lists no hosts"),
        ),
        (
            tpu,
            vec!["--config", "c.toml", "--frobnicate", &a],
            "unknown option --frobnicate".into(),
        ),
        (
            gpu,
            vec!["--config", "c.toml", "--slices", "2", &a],
            "unknown option --slices".into(),
        ),
        (
            tpu,
            vec!["--config", "c.toml", "--slices", "3", &a, &b],
            "--slices 3 but 2 hosts file(s) given".into(),
        ),
        (
            tpu,
            vec!["--config", "c.toml", &a, &short],
            format!("slice 1 ({short}) has 3 hosts but slice 0 ({a}) has 4"),
        ),
        (tpu, vec![&a], "--config CONFIG is required".into()),
        (
            tpu,
            vec!["--config", "c.toml", &dup],
            format!("host x is listed twice: {dup} line 1 and {dup} line 3"),
        ),
        (
            gpu,
            vec!["--config", "c.toml", &junk],
            format!("hosts file {junk} line 1: expected 'SSH_TARGET [ADDRESS]'"),
        ),
        (
            gpu,
            vec!["--config", "c.toml", &a, &b],
            "2 hosts files given".into(),
        ),
        (
            tpu,
            vec!["--config", "c.toml", "--set", "train.steps", &a],
            "--set train.steps: expected KEY=VALUE".into(),
        ),
        (
            tpu,
            vec!["--config", "c.toml", "--port", "70000", &a],
            "--port 70000: expected a whole number from 1 to 65535".into(),
        ),
        (
            tpu,
            vec!["--config", "--dry-run", &a],
            "--config needs a value".into(),
        ),
    ];
    for (name, args, message) in cases {
        let mut all = args.clone();
        all.push("--dry-run");
        let out = launch(name, &all, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {err}");
        assert!(
            err.starts_with(&format!("{name}: {message}")),
            "{name} {args:?}: expected {message:?}, got {err}"
        );
        assert_eq!(text(&out.stdout), "", "{name} {args:?} planned something");
    }
}

// ---- real launches on emulated hosts ----

/// One emulated job at a time (jobs in parallel on 2 cores starve heartbeats).
static SERIAL: Mutex<()> = Mutex::new(());

/// `ssh HOST COMMAND` and `scp SRC HOST:PATH` stand-ins: each host is the
/// directory `root/HOST`, its home; the command runs there with bash (`exec`,
/// so stopping the "ssh" stops the command). Hosts named `down-*` answer
/// like an unreachable ssh server once the coordinator listens on
/// `$EMU_WAIT_PORT` (scp to them works, so the job phase is what fails).
fn emulated_ssh(root: &Path) -> (String, String) {
    let ssh = root.join("ssh");
    std::fs::write(
        &ssh,
        format!(
            r#"#!/usr/bin/env bash
host=$1; shift
case $host in down-*)
  for i in $(seq 600); do (: </dev/tcp/127.0.0.1/$EMU_WAIT_PORT) 2>/dev/null && break; sleep 0.1; done
  echo "ssh: connect to host $host port 22: Connection refused" >&2; exit 255 ;;
esac
export HOME={root}/$host
mkdir -p "$HOME" && cd "$HOME" && exec bash -c "$*"
"#,
            root = root.display()
        ),
    )
    .unwrap();
    let scp = root.join("scp");
    std::fs::write(
        &scp,
        format!(
            r#"#!/usr/bin/env bash
src=$1; host=${{2%%:*}}; dest=${{2#*:}}
mkdir -p {root}/$host && cp -p "$src" {root}/$host/$dest
"#,
            root = root.display()
        ),
    )
    .unwrap();
    for p in [&ssh, &scp] {
        Command::new("chmod").arg("+x").arg(p).status().unwrap();
    }
    (ssh.display().to_string(), scp.display().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a launch for real with the emulated ssh/scp; gives up after `secs`.
/// Its output must close soon after it exits: a process it started that
/// lives on (holding the pipe) fails the test.
fn launch_emulated(
    name: &str,
    args: &[&str],
    root: &Path,
    port: u16,
    secs: u64,
) -> (Option<i32>, String) {
    let (ssh, scp) = emulated_ssh(root);
    // The hosts' HOME is their directory: keep the plugin cache this
    // machine already has (pjrt::install::home's order).
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = var("MESHTRAIN_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("meshtrain")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("meshtrain")))
        .unwrap_or_else(|| std::env::temp_dir().join("meshtrain"));
    let mut child = Command::new("bash")
        .arg(script(name))
        .args(args)
        .env("MESHTRAIN_SSH", ssh)
        .env("MESHTRAIN_SCP", scp)
        .env("MESHTRAIN_BIN", env!("CARGO_BIN_EXE_meshtrain"))
        .env("MESHTRAIN_HOME", cache)
        .env("EMU_WAIT_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("{name} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a process the launcher started still holds its output open");
    (status.code(), err)
}

#[test]
fn gpu_launcher_really_runs_a_cpu_job_on_emulated_nodes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let root = dir.path().join("hosts");
    std::fs::create_dir(&root).unwrap();
    let file = hosts_file(
        dir.path(),
        "nodes.hosts",
        &["node-a 127.0.0.1".into(), "node-b 127.0.0.1".into()],
    );
    let port = free_port();
    let port_s = port.to_string();
    let cfg = cfg.display().to_string();
    let (code, err) = launch_emulated(
        "launch-gpu-nodes.sh",
        &[
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1",
            "--port",
            &port_s,
            &file,
        ],
        &root,
        port,
        300,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("[coordinator] job finished: ")
            && err.contains("launch-gpu-nodes.sh: every process finished"),
        "{err}"
    );
    // Each node's lines carry its tag; nothing came back untagged.
    for line in err.lines() {
        assert!(
            line.starts_with("[coordinator] ")
                || line.starts_with("[node 0] ")
                || line.starts_with("[node 1] ")
                || line.starts_with("launch-gpu-nodes.sh: "),
            "untagged line {line:?} in\n{err}"
        );
    }
    // The job trained all 6 steps (logged every 2 and the last), with finite losses.
    let logged = losses(&dir.path().join("run"));
    let steps: Vec<u64> = logged.iter().map(|l| l.0).collect();
    assert_eq!(steps, [0, 2, 4, 5], "{err}");
    assert!(logged.iter().all(|l| l.1.is_finite()), "{logged:?}");
    // Both nodes got the same fresh token, private to the user.
    let tokens: Vec<String> = ["node-a", "node-b"]
        .iter()
        .map(|h| {
            let p = root.join(h).join(".meshtrain-job.token");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            std::fs::read_to_string(&p).unwrap()
        })
        .collect();
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[0].len(), 64);
    assert!(tokens[0].chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn tpu_launcher_stops_every_host_when_one_cannot_be_reached() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path()).display().to_string();
    let root = dir.path().join("hosts");
    std::fs::create_dir(&root).unwrap();
    let s0 = hosts_file(dir.path(), "s0.hosts", &["tpu-a 127.0.0.1".into()]);
    let s1 = hosts_file(dir.path(), "s1.hosts", &["down-b 127.0.0.1".into()]);
    let port: u16 = free_port();
    let port_s = port.to_string();
    let (code, err) = launch_emulated(
        "launch-tpu-pod.sh",
        &[
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1",
            "--port",
            &port_s,
            &s0,
            &s1,
        ],
        &root,
        port,
        120,
    );
    assert_eq!(code, Some(255), "{err}");
    assert!(
        err.contains("[coordinator] meshtrain coordinator: listening on 127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.contains("[slice 1 worker 0] ssh: connect to host down-b port 22: Connection refused")
            && err.contains("launch-tpu-pod.sh: [slice 1 worker 0] failed (exit status 255)")
            && err.contains("launch-tpu-pod.sh: stopping the other 2 processes"),
        "{err}"
    );
    // The coordinator was listening when down-b failed, and is gone now:
    // its port is free again.
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the coordinator still holds port {port}:\n{err}"
    );
}
