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
    /// Train from a config file (default: the embedded CPU smoke config).
    Train(cmd::train::Args),
    /// Score a model: next-token loss, the memorization test, or multiple-choice tasks.
    Eval(cmd::eval::Args),
    /// Score rows (tokens, texts or conversations) with a reward model.
    Reward(cmd::reward::Args),
    /// Continue prompts with a model: greedy or sampled, on any mesh.
    Generate(cmd::generate::Args),
    /// Serve a multi-process job: workers join it, it supervises them and writes the metrics.
    Coordinator(cmd::coordinator::Args),
    /// Join a multi-process job and train this process's share.
    Worker(cmd::worker::Args),
    /// Write a checkpoint's parameters as a Hugging Face model directory.
    Export(cmd::export::Args),
    /// Compile the training step for a TPU slice without one: does it fit, what does it cost.
    Plan(cmd::plan::Args),
    /// Install a PJRT plugin (cpu, cuda, cuda12, cuda13, tpu) or the Gemma tokenizer.
    Setup(cmd::setup::Args),
    /// List the devices a PJRT plugin exposes.
    Devices(cmd::devices::Args),
    /// Turn text corpora into token shards.
    Tokenize(data::cli::TokenizeArgs),
    /// Encode, decode or train tokenizers.
    Tokenizer(data::cli::TokenizerArgs),
}

fn main() -> ExitCode {
    cmd::quiet_plugin_logs();
    let cli = Cli::parse();
    // Library warnings (refused RPCs, lost workers) go to stderr;
    // MESHTRAIN_LOG=info|debug shows more.
    let level = std::env::var("MESHTRAIN_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
    // Commands that run XLA programs keep its per-execution temporaries in
    // the heap (see pjrt::tune_host_allocator); tokenizing on all cores
    // keeps glibc's per-thread arenas.
    if matches!(
        cli.command,
        Command::Train(_)
            | Command::Eval(_)
            | Command::Generate(_)
            | Command::Reward(_)
            | Command::Plan(_)
            | Command::Worker(_)
    ) {
        pjrt::tune_host_allocator();
    }
    let result = match cli.command {
        Command::Train(args) => cmd::train::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Reward(args) => cmd::reward::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Coordinator(args) => cmd::coordinator::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Setup(args) => cmd::setup::run(args),
        Command::Devices(args) => cmd::devices::run(args),
        Command::Tokenize(args) => data::cli::run_tokenize(args),
        Command::Tokenizer(args) => data::cli::run_tokenizer(args),
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
            eprintln!("meshtrain: error: {}", message(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause whose text the message
/// already carries (library errors print their source inline).
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
