//! `meshtrain eval --checkpoint DIR --tokens FILE [--json]`

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `meshtrain eval`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory (config.json + *.safetensors), e.g. a run's `final/`,
    /// or a meshtrain checkpoint (`run_dir/checkpoints/step_N`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Token rows: `{"input_ids": [[...], ...]}` (JSON) or one `{"input_ids": [...]}` per line.
    #[arg(long)]
    tokens: PathBuf,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let client = pjrt::cpu_client(1)?;
    let r = train::eval::evaluate(&client, &args.checkpoint, &args.tokens, args.batch_size)?;
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
