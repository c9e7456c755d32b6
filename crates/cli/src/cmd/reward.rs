//! `meshtrain reward --checkpoint DIR (--tokens FILE | --texts FILE.jsonl | --conversations FILE.jsonl) [--json]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use train::generate::source;

/// Arguments of `meshtrain reward`.
#[derive(clap::Args)]
pub struct Args {
    /// A reward model: a Hugging Face `GemmaForSequenceClassification` directory (e.g. the
    /// `final/` of a `train.objective = "reward"` run) or a meshtrain checkpoint of one.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Token rows of any length: `{"input_ids": [[...], ...]}` or one row per line.
    #[arg(long, conflicts_with_all = ["texts", "conversations"])]
    tokens: Option<PathBuf>,
    /// Texts, one `{"text": "..."}` per line, encoded after <bos>.
    #[arg(long, conflicts_with = "conversations")]
    texts: Option<PathBuf>,
    /// Conversations, one `{"messages": [...]}` per line, rendered in Gemma's chat format.
    #[arg(long)]
    conversations: Option<PathBuf>,
    /// `gemma` or a tokenizer.json for --texts and --conversations (default: the model's own).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print one JSON object: {"rewards": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = source::load_model(&args.checkpoint)?;
    let tokenizer = || -> Result<data::Tokenizer> {
        let Some(spec) = args.tokenizer.clone().or_else(|| model.tokenizer.clone()) else {
            bail!(
                "{} has no tokenizer (no tokenizer.json, no training config naming one): give --tokenizer gemma|FILE, or --tokens",
                args.checkpoint.display()
            );
        };
        Ok(source::load_tokenizer(&spec)?)
    };
    let (rows, file) = match (&args.tokens, &args.texts, &args.conversations) {
        (Some(f), _, _) => (source::read_token_rows(f)?, f),
        (None, Some(f), None) => {
            let tok = tokenizer()?;
            let mut rows = Vec::new();
            for (line, v) in jsonl(f)? {
                let Some(text) = v.get("text").and_then(|t| t.as_str()) else {
                    bail!(
                        "{}: line {line}: \"text\" missing or not a string; expected {{\"text\": \"...\"}}",
                        f.display()
                    );
                };
                let mut ids = vec![tok.bos_id()];
                ids.extend(tok.encode(text)?);
                rows.push(ids);
            }
            (rows, f)
        }
        (None, None, Some(f)) => {
            let tok = tokenizer()?;
            let rows = data::chat::read_chat_file(f)?
                .iter()
                .map(|(_, m)| Ok(data::chat::encode_chat(&tok, m)?.input_ids))
                .collect::<Result<Vec<_>>>()?;
            (rows, f)
        }
        _ => {
            bail!("give the rows: --tokens FILE, --texts FILE.jsonl or --conversations FILE.jsonl")
        }
    };
    if rows.is_empty() {
        bail!("{}: holds no rows", file.display());
    }
    let client = pjrt::cpu_client(1)?;
    let rewards = train::reward::score_rows(
        &client,
        &model.checkpoint,
        &rows,
        args.batch_size,
        &file.display().to_string(),
    )?;
    if args.json {
        println!("{}", serde_json::json!({ "rewards": rewards }));
    } else {
        for (i, r) in rewards.iter().enumerate() {
            println!("row {i}: {r:.6}");
        }
    }
    Ok(())
}

/// `(line number, JSON value)` of each non-empty line.
fn jsonl(path: &std::path::Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}
