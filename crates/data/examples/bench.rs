//! Throughput of tokenization and of the loader, printed as a table.
//!
//! ```text
//! cargo run -p meshtrain-data --release --example bench -- [gemma|PATH] [TEXT_FILE]
//! ```
//!
//! Defaults: the smoke tokenizer and the smoke corpus (repeated to about 3 MB), cut into
//! paragraphs. Compare with `scripts/bench_tokenizers.py` (Python SentencePiece and HF
//! tokenizers on the same text and paragraphs).

use std::time::Instant;

use data::{DataConfig, DataFormat, Loader, TextUnit, TokenizeOptions, Tokenizer};

fn main() -> data::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args
        .first()
        .cloned()
        .unwrap_or_else(|| "configs/data/shakespeare-bpe8k.json".into());
    let text_file = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "configs/data/tinyshakespeare.txt".into());
    let tok = Tokenizer::load(&spec, &data::cache_dir())?;
    let base = std::fs::read_to_string(&text_file).map_err(|e| data::Error::io(&text_file, e))?;
    let copies = (3_000_000 / base.len().max(1)).max(1);
    let text = base.repeat(copies);
    let paras: Vec<&str> = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    let bytes: usize = paras.iter().map(|p| p.len()).sum();
    println!(
        "tokenizer {spec} ({} ids), text {text_file} x{copies}: {} paragraphs, {:.2} MB",
        tok.vocab_size(),
        paras.len(),
        bytes as f64 / 1e6
    );

    // One core, paragraph by paragraph.
    let t = Instant::now();
    let mut tokens = 0usize;
    for p in &paras {
        tokens += tok.encode(p)?.len();
    }
    let one = t.elapsed().as_secs_f64();
    println!("| what | MB/s | tokens/s |");
    println!("|---|---|---|");
    println!(
        "| encode, 1 thread | {:.2} | {:.0} |",
        bytes as f64 / 1e6 / one,
        tokens as f64 / one
    );

    // `tokenize` on all cores, into shards.
    let dir = tempfile::tempdir().map_err(|e| data::Error::io("tempdir", e))?;
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).map_err(|e| data::Error::io(&input, e))?;
    let mut opts = TokenizeOptions {
        inputs: vec![input.display().to_string()],
        output: dir.path().join("shards"),
        text_unit: TextUnit::Paragraph,
        ..Default::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        opts.output = dir.path().join(format!("shards-{threads}"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let s = pool.install(|| data::tokenize(&tok, &opts, &|_| {}))?;
        println!(
            "| tokenize -> shards, {} threads | {:.2} ({:.2} per thread) | {:.0} |",
            s.threads,
            s.mb_per_s(),
            s.mb_per_s() / s.threads as f64,
            s.tokens_per_s()
        );
    }

    // Loader: packed batches of 8 x 2048 from the shards.
    for (seq_len, batch) in [(256, 4), (2048, 8)] {
        let cfg = DataConfig::new(
            DataFormat::Shards,
            opts.output.to_str().expect("utf-8 path"),
            seq_len,
            batch,
        );
        let mut loader = Loader::new(&cfg, 0, 1, None)?;
        loader.next_batch()?;
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(loader.next_batch()?);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "| loader, {batch} x {seq_len} packed, shuffled | | {:.0} ({:.0} batches/s) |",
            (n * batch * seq_len) as f64 / dt,
            n as f64 / dt
        );
    }
    Ok(())
}
