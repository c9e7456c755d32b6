//! `meshtrain train [--config FILE] [--set key=value]...`

use std::path::PathBuf;

use anyhow::Result;
use train::TrainConfig;

/// Arguments of `meshtrain train`.
#[derive(clap::Args)]
pub struct Args {
    /// TOML config; without it, the embedded configs/smoke.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any config key by its dotted path, e.g. `--set optimizer.lr=1e-3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = TrainConfig::load(args.config.as_deref(), &args.sets)?;
    let summary = train::train(&cfg, !args.quiet)?;
    if summary.losses.is_empty() {
        println!(
            "nothing to train: {} already holds step {} of train.steps = {} {}",
            summary.run_dir.display(),
            summary.start_step,
            cfg.train.steps,
            super::TRAIN_AGAIN
        );
        return Ok(());
    }
    let first = summary.losses.first().map_or(f32::NAN, |l| l.1);
    let last = summary.losses.last().map_or(f32::NAN, |l| l.1);
    println!(
        "trained {} steps: loss {first:.4} -> {last:.4}; compile {:.1} s, median step {:.3} s; run dir {}",
        summary.losses.len(),
        summary.compile_seconds,
        summary.median_step_seconds,
        summary.run_dir.display()
    );
    Ok(())
}
