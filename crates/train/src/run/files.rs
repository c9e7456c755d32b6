//! The run directory's files: `metrics.jsonl`, step-time statistics, the
//! progress bar, and atomic writes.

use crate::{Error, Result};

/// The JSON objects of a `metrics.jsonl` (unreadable lines skipped).
pub(crate) fn metric_lines(path: &std::path::Path) -> std::io::Result<Vec<serde_json::Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// `(step, loss)` of the lines of `metrics.jsonl` before step `start`
/// (empty if it cannot be read: the plot is a convenience).
pub(crate) fn earlier_losses(path: &std::path::Path, start: u64) -> Vec<(u64, f32)> {
    metric_lines(path)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()? as f32)))
        .filter(|(s, _)| *s < start)
        .collect()
}

/// Opens `metrics.jsonl` for appending; on a resume from step `start` the
/// lines of steps at or after it (trained again now) are dropped first.
pub fn open_metrics(path: &std::path::Path, start: u64) -> Result<std::fs::File> {
    if start > 0 && path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < start)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_file(path, kept.as_bytes())?;
    } else {
        write_file(path, b"")?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))
}

/// Step times of a run's `metrics.jsonl` after its first logged step (which
/// carries warm-up): `(median, mean, max)` seconds.
pub fn step_time_stats(run_dir: &std::path::Path) -> Result<(f64, f64, f64)> {
    let path = run_dir.join("metrics.jsonl");
    let lines = metric_lines(&path).map_err(|e| Error::io("reading", &path, e))?;
    let mut times: Vec<f64> = lines
        .iter()
        .skip(1)
        .filter_map(|v| v["step_time_s"].as_f64())
        .collect();
    if times.is_empty() {
        return Ok((0.0, 0.0, 0.0));
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((times[times.len() / 2], mean, times[times.len() - 1]))
}

/// The progress bar of a run (hidden when `show` is false).
pub fn progress_bar(steps: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            // invariant: a constant template.
            .expect("valid template"),
    );
    bar
}

pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}
