//! `meshtrain worker --coordinator ADDR [--token-file F] [--config FILE]`

use std::path::PathBuf;

use anyhow::{Result, bail};
use train::TrainConfig;

/// Arguments of `meshtrain worker`.
#[derive(clap::Args)]
pub struct Args {
    /// The coordinator, `host:port`.
    #[arg(long)]
    coordinator: String,
    /// File holding the job token (else the MESHTRAIN_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// This worker's config: the coordinator refuses the worker if the job's
    /// resolved config differs. Without it the worker takes the job's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override keys of `--config`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    sets: Vec<String>,
    /// PEM CA certificate: connect with TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Server name to verify with TLS (default: the coordinator's host).
    #[arg(long, requires = "tls_ca")]
    tls_domain: Option<String>,
    /// Show a progress bar.
    #[arg(long)]
    progress: bool,
}

pub fn run(args: Args) -> Result<()> {
    let token = cluster::load_token(args.token_file.as_deref(), job::TOKEN_ENV)?;
    let own = match &args.config {
        Some(p) => Some(TrainConfig::load(Some(p), &args.sets)?),
        None => None,
    };
    // Reported at registration; the job's config decides what is used.
    let (backend, devices) = own.as_ref().map_or(("cpu".to_string(), 1), |c| {
        (c.runtime.backend.clone(), c.runtime.device_count as u32)
    });
    let tls = match args.tls_ca {
        Some(ca) => {
            let host = args.coordinator.rsplit_once(':').map(|h| h.0);
            let Some(domain) = args.tls_domain.or(host.map(str::to_string)) else {
                bail!("--coordinator {}: expected host:port", args.coordinator);
            };
            Some(cluster::TlsClient {
                ca_pem_path: ca,
                domain,
            })
        }
        None => None,
    };
    let pid = job::worker::run(job::worker::Options {
        coordinator: args.coordinator,
        token,
        tls,
        config: own.map(|c| c.to_toml()),
        backend,
        devices,
        show_progress: args.progress,
    })?;
    eprintln!("meshtrain worker: process {pid} done");
    Ok(())
}
