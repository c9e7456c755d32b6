//! `meshtrain export --checkpoint DIR --to hf OUT [--dtype bf16|f32]`

use std::path::PathBuf;

use anyhow::{Result, bail};
use gemma::hf::SaveDtype;

/// Arguments of `meshtrain export`.
#[derive(clap::Args)]
pub struct Args {
    /// A meshtrain checkpoint, e.g. `runs/smoke/checkpoints/step_00000200`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output format and directory: `--to hf OUT` (a new directory).
    #[arg(long, num_args = 2, value_names = ["FORMAT", "OUT"])]
    to: Vec<String>,
    /// Tensor type on disk: `bf16` or `f32`.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

pub fn run(args: Args) -> Result<()> {
    let [format, out] = args.to.as_slice() else {
        bail!("--to expects a format and a directory, e.g. --to hf out/");
    };
    if format != "hf" {
        bail!("--to {format}: unknown format; expected \"hf\" (Hugging Face)");
    }
    let dtype = match args.dtype.as_str() {
        "bf16" => SaveDtype::Bf16,
        "f32" => SaveDtype::F32,
        other => bail!("--dtype {other}: expected \"bf16\" or \"f32\""),
    };
    let ckpt = train::checkpoint::Checkpoint::open(&args.checkpoint)?;
    let out = PathBuf::from(out);
    ckpt.export_hf(&out, dtype)?;
    println!(
        "exported step {} of {} to {} (Hugging Face, {})",
        ckpt.step(),
        args.checkpoint.display(),
        out.display(),
        args.dtype
    );
    Ok(())
}
