//! Speed and memory of `tokenize` with and without its filters, on a generated corpus.
//!
//! ```text
//! cargo run -p meshtrain-data --release --example filter_bench -- [--gb 1.0] [--threads N]
//!     [--tokenizer gemma|PATH] [--dir DIR] [--modes plain,dedup-exact,dedup-near,pii-redact,near+redact]
//! ```
//!
//! The corpus is generated, never downloaded: JSONL documents of 20–80 random lines of the
//! smoke Shakespeare corpus (about 2.5 kB each), of which 4% are exact copies of a recent
//! document (other case and spacing), 4% near copies (three words changed) and 10% carry an
//! email address, phone number, card number or SSN. It is written to `DIR/corpus-<gb>.jsonl`
//! (default: the system temp directory) and reused by later runs. Each configuration runs in a
//! child process of its own, which samples its anonymous resident memory (`RssAnon`: heap,
//! not the page cache of the memory-mapped input) every 20 ms; the table gives the peak.
//! Besides wall-clock MB/s it gives MB per CPU-second (user + system time of the child, from
//! `/proc/self/stat`): the per-core speed, which stays meaningful on a machine whose cores are
//! shared with other work.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use data::{DedupMode, FilterOptions, InputFormat, PiiMode, TokenizeOptions, Tokenizer};

const MODES: [&str; 5] = [
    "plain",
    "dedup-exact",
    "dedup-near",
    "pii-redact",
    "near+redact",
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode) = arg(&args, "--child") {
        return child(&args, &mode);
    }
    let gb: f64 = arg(&args, "--gb").map_or(Ok(1.0), |s| s.parse())?;
    let threads = arg(&args, "--threads").map_or_else(
        || Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        |s| s.parse(),
    )?;
    let tokenizer = arg(&args, "--tokenizer").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/data/shakespeare-bpe8k.json"
        )
        .into()
    });
    let dir = arg(&args, "--dir").map_or_else(std::env::temp_dir, PathBuf::from);
    let modes: Vec<String> = arg(&args, "--modes").map_or_else(
        || MODES.iter().map(|m| m.to_string()).collect(),
        |m| m.split(',').map(str::to_string).collect(),
    );
    let corpus = dir.join(format!("corpus-{gb}.jsonl"));
    if !corpus.is_file() {
        let t = Instant::now();
        let (docs, bytes) = generate(&corpus, (gb * 1e9) as u64)?;
        println!(
            "generated {} ({docs} documents, {:.2} GB) in {:.0} s",
            corpus.display(),
            bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
    }
    let size = std::fs::metadata(&corpus)?.len();
    println!(
        "corpus {} ({:.2} GB), tokenizer {tokenizer}, {threads} threads",
        corpus.display(),
        size as f64 / 1e9
    );
    println!(
        "| tokenize | wall s | MB/s | MB/s per thread | MB per CPU-second | tokens/s | peak heap (RssAnon) | dedup index | documents out | removed: exact / near / PII docs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for mode in &modes {
        let out = std::process::Command::new(&exe)
            .args(["--child", mode, "--threads", &threads.to_string()])
            .args(["--tokenizer", &tokenizer])
            .args(["--input", corpus.to_str().ok_or("non-UTF-8 path")?])
            .output()?;
        if !out.status.success() {
            return Err(format!("{mode}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mbs = v["mb_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "| {mode} | {:.0} | {mbs:.2} | {:.2} | {:.2} | {:.0} | {:.0} MB | {:.0} MB | {} | {} / {} / {} |",
            v["seconds"].as_f64().unwrap_or(0.0),
            mbs / threads as f64,
            size as f64 / 1e6 / v["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
            v["tokens_per_s"].as_f64().unwrap_or(0.0),
            v["peak_anon_mb"].as_f64().unwrap_or(0.0),
            v["report"]["dedup_index_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            v["report"]["documents_out"],
            v["report"]["exact_duplicates"],
            v["report"]["near_duplicates"],
            v["report"]["pii_personal_docs"].as_u64().unwrap_or(0)
                + v["report"]["pii_sensitive_docs"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

/// One configuration, in a process of its own: prints a JSON object.
fn child(args: &[String], mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = arg(args, "--threads").ok_or("--threads")?.parse()?;
    let input = arg(args, "--input").ok_or("--input")?;
    let tok = Tokenizer::load(
        &arg(args, "--tokenizer").ok_or("--tokenizer")?,
        &data::cache_dir(),
    )?;
    let (dedup, pii) = match mode {
        "plain" => (DedupMode::None, None),
        "dedup-exact" => (DedupMode::Exact, None),
        "dedup-near" => (DedupMode::Near, None),
        "pii-redact" => (DedupMode::None, Some(PiiMode::Redact)),
        "near+redact" => (DedupMode::Near, Some(PiiMode::Redact)),
        other => return Err(format!("unknown mode {other}").into()),
    };
    let out = tempfile::tempdir()?;
    let opts = TokenizeOptions {
        inputs: vec![input],
        output: out.path().join("shards"),
        format: InputFormat::Jsonl,
        filter: FilterOptions {
            dedup,
            pii,
            ..Default::default()
        },
        ..Default::default()
    };
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kb(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let s = pool.install(|| data::tokenize(&tok, &opts, &|_| {}))?;
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| "sampler panicked")?;
    let v = serde_json::json!({
        "mb_per_s": s.mb_per_s(),
        "tokens_per_s": s.tokens_per_s(),
        "seconds": s.seconds,
        "peak_anon_mb": peak.load(Ordering::Relaxed) as f64 / 1e3,
        "cpu_seconds": cpu_seconds(),
        "report": s.filter,
    });
    println!("{v}");
    Ok(())
}

/// User + system CPU seconds of this process so far (`/proc/self/stat` fields 14 and 15, in
/// clock ticks of 1/100 s: `USER_HZ` on x86 and ARM Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3, so fields 14 and 15 are at 11 and 12.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn rss_anon_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes about `target` bytes of JSONL documents; returns documents and bytes.
fn generate(path: &Path, target: u64) -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/data/tinyshakespeare.txt"
    ))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let words: Vec<&str> = text.split_whitespace().collect();
    let tmp = path.with_extension("jsonl.tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut rng = Rng(0x00c0_ffee);
    let mut recent: Vec<String> = Vec::new();
    let (mut docs, mut bytes) = (0u64, 0u64);
    while bytes < target {
        let roll = rng.below(100);
        let doc = if roll < 4 && !recent.is_empty() {
            let d = &recent[rng.below(recent.len())];
            d.to_uppercase().replace(' ', "  ")
        } else if roll < 8 && !recent.is_empty() {
            let mut d: Vec<&str> = recent[rng.below(recent.len())].split(' ').collect();
            for _ in 0..3 {
                let at = rng.below(d.len());
                d[at] = words[rng.below(words.len())];
            }
            d.join(" ")
        } else {
            let n = 20 + rng.below(61);
            let mut d: Vec<&str> = (0..n).map(|_| lines[rng.below(lines.len())]).collect();
            let planted;
            if roll < 18 {
                planted = pii(&mut rng);
                let at = rng.below(d.len());
                d.insert(at, &planted);
            }
            let d = d.join("\n");
            if recent.len() < 1000 {
                recent.push(d.clone());
            } else {
                let at = rng.below(recent.len());
                recent[at] = d.clone();
            }
            d
        };
        let line = serde_json::json!({ "text": doc }).to_string();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        bytes += line.len() as u64 + 1;
        docs += 1;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok((docs, bytes))
}

/// A line with one planted piece of personal or sensitive data.
fn pii(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!(
            "Write to user{}@mail{}.example.com for more.",
            rng.below(100_000),
            rng.below(100)
        ),
        1 => format!("Call +44 20 7946 {:04} after six.", rng.below(10_000)),
        2 => format!(
            "Paid with 4111 1111 1111 1111, exp {}/29.",
            1 + rng.below(12)
        ),
        _ => format!(
            "SSN {:03}-{:02}-{:04} on file.",
            100 + rng.below(500),
            10 + rng.below(89),
            1000 + rng.below(8999)
        ),
    }
}
