//! `meshtrain setup WHAT`: install a pinned PJRT plugin or the Gemma tokenizer.

use anyhow::Result;
use pjrt::install::{self, Backend};

/// Arguments of `meshtrain setup`.
#[derive(clap::Args)]
pub struct Args {
    /// What to install: cpu, cuda (= cuda12), cuda12, cuda13, tpu, or tokenizer.
    what: String,
    #[command(flatten)]
    tokenizer: data::cli::SetupTokenizerArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.what == "tokenizer" {
        return data::cli::run_setup_tokenizer(args.tokenizer);
    }
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
