//! `meshtrain eval --checkpoint DIR [--task loss|memorization|choices] ...`

use std::path::PathBuf;

use anyhow::{Result, bail};
use train::generate::{Generator, source};
use train::tasks::{self, MemorizationOptions};

use super::runtime::RuntimeArgs;

/// Arguments of `meshtrain eval`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (config.json + *.safetensors), e.g. a run's `final/`,
    /// or a meshtrain checkpoint (`run_dir/checkpoints/step_N`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// `loss` (mean next-token loss of --tokens rows), `memorization` (the Gemma
    /// report's test on --tokens or --shards documents) or `choices` (multiple
    /// choice by log-likelihood on --file).
    #[arg(long, default_value = "loss")]
    task: String,
    /// Token rows: `{"input_ids": [[...], ...]}` (JSON) or one `{"input_ids": [...]}` per line.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// memorization: a token shard directory (`meshtrain tokenize`); documents get <bos> first.
    #[arg(long, conflicts_with = "tokens")]
    shards: Option<PathBuf>,
    /// choices: one `{"context": ..., "choices": [...], "answer": i}` per line (text or token ids).
    #[arg(long)]
    file: Option<PathBuf>,
    /// `gemma` or a tokenizer.json for text items, and to scan memorized
    /// continuations for personal data (default: the model's own).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Rows per forward pass or generation batch (default: 8 for loss, 32 otherwise).
    #[arg(long)]
    batch_size: Option<usize>,
    /// memorization: prompt tokens from the start of each document.
    #[arg(long, default_value_t = 50)]
    prompt_len: usize,
    /// memorization: greedy tokens that must equal the document's next ones.
    #[arg(long, default_value_t = 50)]
    continuation_len: usize,
    /// memorization: documents sampled (seeded) when there are more.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// memorization: seed of the document sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (choices: with per-item details).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: Args) -> Result<()> {
    match args.task.as_str() {
        "loss" => loss(args),
        "memorization" => memorization(args),
        "choices" => choices(args),
        other => bail!("--task {other}: expected loss, memorization or choices"),
    }
}

fn loss(args: Args) -> Result<()> {
    let Some(tokens) = &args.tokens else {
        bail!("--task loss needs --tokens FILE");
    };
    let client = pjrt::cpu_client(1)?;
    let r = train::eval::evaluate(
        &client,
        &args.checkpoint,
        tokens,
        args.batch_size.unwrap_or(8),
    )?;
    record(
        &args.checkpoint,
        "loss",
        &[("loss", r.loss), ("perplexity", r.perplexity)],
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"loss": r.loss, "perplexity": r.perplexity, "tokens": r.tokens})
        );
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  over {} predicted tokens",
            r.loss, r.perplexity, r.tokens
        );
    }
    Ok(())
}

fn memorization(args: Args) -> Result<()> {
    let opts = MemorizationOptions {
        prompt_len: args.prompt_len,
        continuation_len: args.continuation_len,
        docs: args.docs,
        seed: args.seed,
        max_batch: args.batch_size.unwrap_or(32),
    };
    let docs: Vec<(usize, Vec<u32>)> = match (&args.tokens, &args.shards) {
        (Some(f), _) => {
            let rows = source::read_token_rows(f)?;
            let picks = tasks::sample_indices(rows.len(), opts.docs, opts.seed);
            picks.into_iter().map(|i| (i, rows[i].clone())).collect()
        }
        (None, Some(dir)) => tasks::sample_shard_docs(dir, opts.docs, opts.seed)?,
        (None, None) => bail!("--task memorization needs --tokens FILE or --shards DIR"),
    };
    let model = source::load_model(&args.checkpoint)?;
    let (devices, dtype) = args.runtime.devices(&model)?;
    let mut generator = Generator::new(devices, &model.checkpoint, dtype)?;
    let r = tasks::memorization(&mut generator, &docs, &opts)?;
    // Personal and sensitive data in what was memorized, with the model's
    // tokenizer (or --tokenizer); without one the text is unknown.
    let spec = args.tokenizer.clone().or_else(|| model.tokenizer.clone());
    let pii = match spec.as_deref().map(source::load_tokenizer).transpose()? {
        Some(tok) => Some(tasks::memorized_pii(&docs, &r, &opts, |ids| {
            Ok(tok.decode(ids)?)
        })?),
        None => None,
    };
    let mut values = vec![("rate", r.rate)];
    if let Some(p) = &pii {
        values.push(("personal", p.personal as f64));
        values.push(("sensitive", p.sensitive as f64));
    }
    record(&args.checkpoint, "memorization", &values)?;
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["task"] = "memorization".into();
        v["pii"] = serde_json::to_value(&pii)?;
        println!("{v}");
    } else {
        println!(
            "memorized {} of {} documents ({:.4}%), {} too short to test",
            r.memorized,
            r.docs,
            100.0 * r.rate,
            r.skipped
        );
        match pii {
            Some(p) => println!(
                "memorized continuations with personal data: {}, with sensitive data: {}",
                p.personal, p.sensitive
            ),
            None => {
                println!("no tokenizer (--tokenizer): memorized text not scanned for personal data")
            }
        }
    }
    Ok(())
}

fn choices(args: Args) -> Result<()> {
    let Some(file) = &args.file else {
        bail!("--task choices needs --file tasks.jsonl");
    };
    let model = source::load_model(&args.checkpoint)?;
    let spec = args.tokenizer.clone().or_else(|| model.tokenizer.clone());
    let tokenizer = spec.as_deref().map(source::load_tokenizer).transpose()?;
    let items = tasks::read_choice_items(file, tokenizer.as_ref())?;
    let (devices, dtype) = args.runtime.devices(&model)?;
    let mut generator = Generator::new(devices, &model.checkpoint, dtype)?;
    let r = tasks::score_choices(&mut generator, &items, args.batch_size.unwrap_or(32))?;
    record(
        &args.checkpoint,
        "choices",
        &[("accuracy", r.accuracy), ("accuracy_norm", r.accuracy_norm)],
    )?;
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["task"] = "choices".into();
        println!("{v}");
    } else {
        println!(
            "accuracy {:.4}  length-normalised {:.4}  over {} items",
            r.accuracy, r.accuracy_norm, r.items
        );
    }
    Ok(())
}

/// A run's model (`run_dir/checkpoints/...` or `run_dir/final`) gets its
/// eval results in the run's TensorBoard events, under `eval/<task>/`.
fn record(model: &std::path::Path, task: &str, values: &[(&str, f64)]) -> Result<()> {
    if let Some(file) = train::tensorboard::record_eval(model, task, values)? {
        eprintln!("meshtrain: eval results added to {}", file.display());
    }
    Ok(())
}
