//! Compares the two CPU plugins on the work a training step is made of:
//! f32 and bf16 matmuls. Each plugin runs in its own child process (two XLA
//! builds in one process would share global state). Prints a table.
//!
//! `cargo bench -p meshtrain-pjrt --bench plugins`

use std::process::Command;
use std::time::Instant;

use pjrt::install::{self, Backend};
use pjrt::{Client, CompileOptions, OptionValue, Plugin, bf16};

const N: usize = 1024;
const CHAIN: usize = 4;

fn program(ty: &str) -> String {
    let t = format!("tensor<{N}x{N}x{ty}>");
    let mut body = String::new();
    let mut prev = "%x".to_string();
    for i in 0..CHAIN {
        body += &format!(
            "    %d{i} = stablehlo.dot_general {prev}, %w, contracting_dims = [1] x [0] : ({t}, {t}) -> {t}\n    %t{i} = stablehlo.tanh %d{i} : {t}\n"
        );
        prev = format!("%t{i}");
    }
    format!("func.func public @main(%x: {t}, %w: {t}) -> {t} {{\n{body}    return {prev} : {t}\n}}")
}

fn child(plugin: &str, ty: &str) {
    let p = Plugin::load(plugin).unwrap();
    let c = Client::new(&p, &[("cpu_device_count", OptionValue::Int(1))]).unwrap();
    let t0 = Instant::now();
    let exe = c.compile(&program(ty), &CompileOptions::single()).unwrap();
    let compile_s = t0.elapsed().as_secs_f64();
    let vals: Vec<f32> = (0..N * N)
        .map(|i| ((i % 97) as f32 - 48.0) / 480.0)
        .collect();
    let (x, w) = if ty == "bf16" {
        let v: Vec<bf16> = vals.iter().map(|&f| bf16::from_f32(f)).collect();
        (
            c.buffer_from_host(&v, &[N as i64, N as i64], 0).unwrap(),
            c.buffer_from_host(&v, &[N as i64, N as i64], 0).unwrap(),
        )
    } else {
        (
            c.buffer_from_host(&vals, &[N as i64, N as i64], 0).unwrap(),
            c.buffer_from_host(&vals, &[N as i64, N as i64], 0).unwrap(),
        )
    };
    let mut times = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        let out = exe.execute(&[vec![&x, &w]]).unwrap();
        drop(out);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = (2 * N * N * N * CHAIN) as f64 / median / 1e9;
    println!("{compile_s:.3} {median:.4} {gflops:.1}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], &args[i + 2]);
        return;
    }
    let plugins = [
        (
            "lammps-jax-pjrt-cpu 0.11.2 (default)",
            install::resolve(Backend::Cpu, None).unwrap(),
        ),
        (
            "xla-cpu-pjrt 0.0.1",
            install::install_package(&install::CPU_OFFICIAL).unwrap(),
        ),
    ];
    println!("CPU plugins, {CHAIN} chained {N}x{N} matmuls + tanh, 1 device, median of 12");
    println!(
        "{:<38} {:>5} {:>10} {:>10} {:>9}",
        "plugin", "dtype", "compile s", "step s", "GFLOP/s"
    );
    for (name, path) in &plugins {
        for ty in ["f32", "bf16"] {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--child", path.to_str().unwrap(), ty])
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 {
                println!("{name:<38} {ty:>5} {:>10} {:>10} {:>9}", f[0], f[1], f[2]);
            } else {
                println!("{name:<38} {ty:>5} failed: {}", out.status);
            }
        }
    }
}
