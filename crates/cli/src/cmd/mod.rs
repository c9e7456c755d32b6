//! One module per subcommand: clap arguments and a `run` function.

pub mod coordinator;
pub mod devices;
pub mod eval;
pub mod export;
pub mod plan;
pub mod setup;
pub mod train;
pub mod worker;
