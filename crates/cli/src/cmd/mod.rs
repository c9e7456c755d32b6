//! One module per subcommand: clap arguments and a `run` function.

pub mod coordinator;
pub mod devices;
pub mod eval;
pub mod export;
pub mod generate;
pub mod plan;
pub mod reward;
pub mod runtime;
pub mod setup;
pub mod train;
pub mod worker;

/// What to do when a run directory already holds the run's last step.
const TRAIN_AGAIN: &str =
    "(raise train.steps to go on, or give another train.run_dir to start over)";

/// The PJRT plugins log through absl to stderr: the CPU plugin an INFO line
/// on every client (after absl's "All log messages before
/// absl::InitializeLog()" warning), libtpu and the CUDA plugin more. They
/// read no absl flags at load, only environment variables: XLA's plugins
/// `TF_CPP_MIN_LOG_LEVEL` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL; also
/// `TF_CPP_MAX_VLOG_LEVEL`, `TF_CPP_VMODULE`), libtpu
/// `TPU_STDERR_LOG_LEVEL` (it keeps its full logs in `TPU_LOG_DIR`,
/// `/tmp/tpu_logs` by default). By default only their errors reach the
/// console; `MESHTRAIN_LOG=warn` adds warnings, `info`/`debug`/`trace`
/// everything. A variable the user set is left alone.
pub fn quiet_plugin_logs() {
    let level = plugin_log_level(std::env::var("MESHTRAIN_LOG").ok().as_deref());
    for var in ["TF_CPP_MIN_LOG_LEVEL", "TPU_STDERR_LOG_LEVEL"] {
        if std::env::var_os(var).is_none() {
            // SAFETY: first thing in main, before any thread is started.
            unsafe { std::env::set_var(var, level) };
        }
    }
}

/// The plugins' minimum stderr log level for a `MESHTRAIN_LOG` value.
fn plugin_log_level(meshtrain_log: Option<&str>) -> &'static str {
    match meshtrain_log.map(str::to_ascii_lowercase).as_deref() {
        Some("info" | "debug" | "trace") => "0",
        Some("warn" | "warning") => "1",
        _ => "2",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plugin_log_levels_follow_meshtrain_log() {
        assert_eq!(super::plugin_log_level(None), "2");
        assert_eq!(super::plugin_log_level(Some("error")), "2");
        assert_eq!(super::plugin_log_level(Some("WARN")), "1");
        assert_eq!(super::plugin_log_level(Some("debug")), "0");
        assert_eq!(super::plugin_log_level(Some("info")), "0");
    }
}
