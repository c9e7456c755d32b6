//! `meshtrain setup BACKEND`: install a pinned PJRT plugin.

use anyhow::Result;
use pjrt::install::{self, Backend};

/// Arguments of `meshtrain setup`.
#[derive(clap::Args)]
pub struct Args {
    /// What to install: cpu, cuda (= cuda12), cuda12, cuda13 or tpu.
    what: String,
}

pub fn run(args: Args) -> Result<()> {
    let backend = Backend::parse(&args.what)?;
    let path = install::install(backend)?;
    let pkg = backend.package();
    println!(
        "{} plugin {}=={} at {}",
        args.what,
        pkg.package,
        pkg.version,
        path.display()
    );
    Ok(())
}
