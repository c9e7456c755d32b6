//! `meshtrain coordinator --config FILE --workers N [--listen ADDR] [--token-file F]`

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use train::TrainConfig;

/// Arguments of `meshtrain coordinator`.
#[derive(clap::Args)]
pub struct Args {
    /// The job's TOML config; without it, the embedded configs/smoke.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override config keys, as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Address to serve on. Loopback by default; a wider address sends the
    /// token and gradients in clear unless `[coordinator] tls_cert` is set.
    #[arg(long, default_value = "127.0.0.1:29400")]
    listen: SocketAddr,
    /// Worker processes in the job.
    #[arg(long)]
    workers: u32,
    /// File holding the job token (else the MESHTRAIN_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = TrainConfig::load(args.config.as_deref(), &args.sets)?;
    let token = cluster::load_token(args.token_file.as_deref(), job::TOKEN_ENV)?;
    let (run_dir, steps) = (config.train.run_dir.clone(), config.train.steps);
    let summary = job::coordinator::run(job::coordinator::Options {
        config,
        listen: args.listen,
        workers: args.workers,
        token,
        show_progress: !args.quiet,
        on_listen: None,
    })?;
    let Some(&(_, last)) = summary.losses.last() else {
        println!(
            "job finished: nothing to train: the checkpoints in {} already reach train.steps = {} {}",
            run_dir.display(),
            steps,
            super::TRAIN_AGAIN
        );
        return Ok(());
    };
    println!(
        "job finished: {} logged steps, final loss {last:.4}, {} workers replaced",
        summary.losses.len(),
        summary.restarts
    );
    Ok(())
}
