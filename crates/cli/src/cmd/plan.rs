//! `meshtrain plan --config FILE --topology v5e:16x16 [--set ...] [--json]`

use std::path::PathBuf;

use anyhow::Result;
use train::TrainConfig;

/// Arguments of `meshtrain plan`.
#[derive(clap::Args)]
pub struct Args {
    /// TOML config of the training job.
    #[arg(long)]
    config: PathBuf,
    /// TPU slice, e.g. v5e:16x16, v6e:8x8, v5p:4x4x4.
    #[arg(long)]
    topology: String,
    /// Override any config key by its dotted path.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Number of slices joined over the data-center network (an outer data axis).
    #[arg(long, default_value_t = 1)]
    slices: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = TrainConfig::load(Some(&args.config), &args.sets)?;
    let report = train::plan::plan(&cfg, &args.topology, args.slices)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
