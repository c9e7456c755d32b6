//! One module per subcommand: clap arguments and a `run` function.

pub mod devices;
pub mod setup;
