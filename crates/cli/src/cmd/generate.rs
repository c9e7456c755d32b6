//! `meshtrain generate --checkpoint DIR (--prompt TEXT | --prompts FILE.jsonl | --tokens FILE) [options]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use train::generate::{GenerateOptions, Generator, Sampling, source};

use super::runtime::RuntimeArgs;

/// Arguments of `meshtrain generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (e.g. a run's `final/`) or a meshtrain checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// One prompt (text, encoded with the model's tokenizer after <bos>).
    #[arg(long, conflicts_with_all = ["prompts", "tokens"])]
    prompt: Option<String>,
    /// Prompts, one `{"prompt": "..."}` per line.
    #[arg(long, conflicts_with = "tokens")]
    prompts: Option<PathBuf>,
    /// Token prompts: `{"input_ids": [[...], ...]}` (rows may differ in length) or one row per line.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// `gemma` or a tokenizer.json (default: the model's own).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Ask each text prompt as a user turn in Gemma's chat format
    /// (`<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n`), as a model
    /// fine-tuned on `data.format = "chat"` expects.
    #[arg(long, conflicts_with = "tokens")]
    chat: bool,
    /// New tokens per sample at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Keep the most likely tokens whose probability reaches p (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Seed of the draws (the same seed gives the same samples).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at <eos> or <end_of_turn>.
    #[arg(long)]
    ignore_eos: bool,
    /// Rows (prompt x sample) per batch at most.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// End with one JSON object: {"generations": [{"prompt", "samples", "texts"}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: Args) -> Result<()> {
    let model = source::load_model(&args.checkpoint)?;
    let spec = args.tokenizer.clone().or_else(|| model.tokenizer.clone());
    let tokenizer = match &spec {
        Some(s) => Some(source::load_tokenizer(s)?),
        None => None,
    };
    let text_prompts: Option<Vec<String>> = match (&args.prompt, &args.prompts) {
        (Some(p), _) => Some(vec![p.clone()]),
        (None, Some(f)) => Some(source::read_prompts(f)?),
        _ => None,
    };
    let prompts: Vec<Vec<u32>> = match (&text_prompts, &args.tokens) {
        (Some(texts), _) => {
            let Some(tok) = &tokenizer else {
                bail!(
                    "{} has no tokenizer (no tokenizer.json, no training config naming one): give --tokenizer gemma|FILE, or --tokens",
                    args.checkpoint.display()
                );
            };
            texts
                .iter()
                .map(|t| {
                    let mut ids = vec![tok.bos_id()];
                    if args.chat {
                        use data::chat::{Message, Role, render_prompt};
                        ids.extend(tok.encode(&render_prompt(&[Message::new(Role::User, t)]))?);
                    } else {
                        ids.extend(tok.encode(t)?);
                    }
                    Ok(ids)
                })
                .collect::<Result<_>>()?
        }
        (None, Some(f)) => source::read_token_rows(f)?,
        (None, None) => {
            bail!("give the prompts: --prompt TEXT, --prompts FILE.jsonl or --tokens FILE")
        }
    };
    let vocab = model.checkpoint.config.vocab_size;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        },
        num_samples: args.num_samples,
        seed: args.seed,
        stop_ids: if args.ignore_eos {
            vec![]
        } else {
            source::stop_ids(tokenizer.as_ref(), vocab)
        },
        max_batch: args.batch_size,
    };
    opts.validate()?;
    let (devices, dtype) = args.runtime.devices(&model)?;
    let mut generator = Generator::new(devices, &model.checkpoint, dtype)?;
    let text_of = |ids: &[u32]| -> Result<String> {
        let ids = match ids.last() {
            Some(t) if opts.stop_ids.contains(t) => &ids[..ids.len() - 1],
            _ => ids,
        };
        Ok(tokenizer
            .as_ref()
            .map(|t| t.decode(ids))
            .transpose()?
            .unwrap_or_default())
    };

    // One row: print the text as it comes (unless the output is JSON).
    let stream = !args.json && prompts.len() * args.num_samples == 1;
    let mut so_far: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut out = std::io::stdout().lock();
    if stream {
        match &text_prompts {
            Some(t) => write!(out, "{}", t[0])?,
            None => write!(out, "{:?} ->", prompts[0])?,
        }
        out.flush()?;
    }
    let mut io_err: Option<std::io::Error> = None;
    let gens = generator.generate(&prompts, &opts, &mut |e| {
        if !stream || io_err.is_some() {
            return;
        }
        so_far.push(e.token);
        let r = if tokenizer.is_some() {
            let text = text_of(&so_far).unwrap_or_default();
            let new = text.get(printed.len()..).unwrap_or("").to_string();
            printed = text;
            write!(out, "{new}")
        } else {
            write!(out, " {}", e.token)
        };
        if let Err(err) = r.and_then(|()| out.flush()) {
            io_err = Some(err);
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if stream {
        writeln!(out)?;
    }
    if args.json {
        let list = gens
            .iter()
            .map(|g| {
                let mut o = serde_json::json!({"prompt": g.prompt, "samples": g.samples});
                if tokenizer.is_some() {
                    let texts = g
                        .samples
                        .iter()
                        .map(|s| text_of(s))
                        .collect::<Result<Vec<_>>>()?;
                    o["texts"] = serde_json::json!(texts);
                }
                Ok(o)
            })
            .collect::<Result<Vec<_>>>()?;
        writeln!(out, "{}", serde_json::json!({ "generations": list }))?;
    } else if !stream {
        for (i, g) in gens.iter().enumerate() {
            for (s, sample) in g.samples.iter().enumerate() {
                writeln!(out, "=== prompt {i}, sample {s} ===")?;
                match (&text_prompts, &tokenizer) {
                    (Some(t), Some(_)) => writeln!(out, "{}{}", t[i], text_of(sample)?)?,
                    _ => writeln!(out, "{:?} -> {:?}", g.prompt, sample)?,
                }
            }
        }
    }
    let st = generator.stats;
    eprintln!(
        "meshtrain: compile {:.1} s, prefill {:.2} s, {} decode steps in {:.2} s ({:.1} tokens/s)",
        st.compile_seconds,
        st.prefill_seconds,
        st.decode_steps,
        st.decode_seconds,
        st.decode_rows as f64 / st.decode_seconds.max(1e-9)
    );
    Ok(())
}
