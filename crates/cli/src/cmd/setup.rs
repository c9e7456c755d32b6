//! `meshtrain setup WHAT`: install a pinned PJRT plugin or the Gemma tokenizer.

use anyhow::Result;
use pjrt::install::{self, Backend, cuda};

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
    if let Some(major) = cuda::plugin_major(&path) {
        // The tree must hold every library the plugin needs but the driver.
        let r = cuda::resolve(&path, major)?;
        let problems = r.problems();
        if !problems.is_empty() {
            anyhow::bail!(
                "the CUDA {major} install at {} is incomplete:\n  {}",
                r.root.display(),
                problems.join("\n  ")
            );
        }
        let in_tree = r
            .needs
            .values()
            .filter(|(f, _)| matches!(f, cuda::Found::Runpath(_) | cuda::Found::Preloaded(_)))
            .count();
        println!(
            "{} wheels in {}: all {in_tree} NVIDIA libraries the plugin loads resolve inside it",
            pkg.tree.len(),
            r.root.display()
        );
        match cuda::driver_problem(major) {
            None => println!("NVIDIA driver: libcuda.so.1 loads"),
            Some(why) => println!("{why}"),
        }
    }
    Ok(())
}
