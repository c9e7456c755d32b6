//! One module per subcommand: clap arguments and a `run` function.

pub mod coordinator;
pub mod devices;
pub mod eval;
pub mod export;
pub mod generate;
pub mod plan;
pub mod runtime;
pub mod setup;
pub mod train;
pub mod worker;
