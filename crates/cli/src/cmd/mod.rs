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

/// What to do when a run directory already holds the run's last step.
const TRAIN_AGAIN: &str =
    "(raise train.steps to go on, or give another train.run_dir to start over)";

/// XLA's plugins log at INFO level to stderr (the CPU plugin a line on
/// every client); only warnings and errors are shown unless
/// `TF_CPP_MIN_LOG_LEVEL` is set or `MESHTRAIN_LOG=debug`.
pub fn quiet_xla_info_logs() {
    let debug = std::env::var("MESHTRAIN_LOG").is_ok_and(|l| l.eq_ignore_ascii_case("debug"));
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() && !debug {
        // SAFETY: first thing in main, before any thread is started.
        unsafe { std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1") };
    }
}
