//! `meshtrain`: the command-line front of the framework. Flags are parsed
//! here; all behaviour lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Pretrain and fine-tune Gemma models on TPU, GPU and CPU.
#[derive(Parser)]
#[command(name = "meshtrain", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install a PJRT plugin (cpu, cuda, cuda12, cuda13, tpu) into the cache.
    Setup(cmd::setup::Args),
    /// List the devices a PJRT plugin exposes.
    Devices(cmd::devices::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => cmd::setup::run(args),
        Command::Devices(args) => cmd::devices::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`meshtrain devices | head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("meshtrain: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
