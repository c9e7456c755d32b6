//! TensorBoard event files: `run_dir/tensorboard/events.out.tfevents.*`,
//! which TensorBoard (and anything reading TFRecord `Event`s) opens.
//!
//! Every numeric field of a `metrics.jsonl` line becomes a scalar under
//! `train/` at the line's step (nested objects such as `tokens_by_source`
//! become `train/tokens_by_source/<name>`). Scalars are float32, as
//! TensorBoard keeps them: the loss, learning rate and grad norm come off
//! the device as float32 and are the numbers of `metrics.jsonl` exactly;
//! host-measured numbers (step time, tokens/s, MFU) are those numbers
//! rounded to float32. The
//! resolved config and the sharding report are text summaries; eval
//! results go under `eval/`.
//!
//! A resumed run first drops, from the files already there, every event
//! of a step it trains again (and an incomplete last record), then writes
//! its own new file: no step appears twice.

pub(crate) mod record;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use record::Decoded;
use record::Value;

use crate::{Error, Result};

/// The prefix of event file names TensorBoard looks for.
const PREFIX: &str = "events.out.tfevents.";

/// Appends summaries to one new event file of a run's TensorBoard directory.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// A fixed wall time for every event (reproducible files in tests).
    fixed_time: Option<f64>,
}

impl EventWriter {
    /// Opens a new event file in `dir` (created if missing) for a run that
    /// starts at step `start`, after removing every event at or after
    /// `start` from the files already there.
    pub fn open(dir: &Path, start: u64) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        for old in event_files(dir)? {
            drop_steps_from(&old, start)?;
        }
        Self::new_file(dir)
    }

    /// Opens a new event file in `dir` (created if missing), leaving the
    /// files already there as they are.
    pub fn new_file(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        // Newer files sort after older ones (readers take them in name
        // order): microseconds since the epoch, then host and process.
        let mut micros = (wall_time() * 1e6) as u64;
        loop {
            let name = format!("{PREFIX}{micros:016}.{}.{}", hostname(), std::process::id());
            match Self::create(&dir.join(name), None) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    micros += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates the event file `path` whose events all carry `wall_time`:
    /// byte-for-byte reproducible output (the golden test).
    pub fn create_with_wall_time(path: &Path, wall_time: f64) -> Result<EventWriter> {
        Self::create(path, Some(wall_time))
    }

    fn create(path: &Path, fixed_time: Option<f64>) -> Result<EventWriter> {
        let file = std::fs::File::create_new(path).map_err(|e| Error::io("creating", path, e))?;
        let mut w = EventWriter {
            file: std::io::BufWriter::new(file),
            path: path.to_owned(),
            fixed_time,
        };
        let t = w.now();
        w.record(&record::version_event(t))?;
        w.flush()?;
        Ok(w)
    }

    /// The event file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn now(&self) -> f64 {
        self.fixed_time.unwrap_or_else(wall_time)
    }

    fn record(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&record::frame(event))
            .map_err(|e| Error::io("writing", &self.path, e))
    }

    /// Scalars `prefix/<key>` of every number in the JSON object `line`
    /// (nested objects give `prefix/<key>/<inner key>`), at `step`; the
    /// `step` field itself is the event's step, not a scalar.
    pub fn metrics(&mut self, prefix: &str, step: u64, line: &serde_json::Value) -> Result<()> {
        let mut values = Vec::new();
        flatten(prefix, line, &mut values);
        values.retain(|(tag, _)| *tag != format!("{prefix}/step"));
        let values: Vec<(String, Value)> = values
            .into_iter()
            .map(|(tag, x)| (tag, Value::Scalar(x as f32)))
            .collect();
        let t = self.now();
        self.record(&record::summary_event(t, step, &values))
    }

    /// One scalar `tag` at `step` (stored as float32).
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        let t = self.now();
        self.record(&record::summary_event(
            t,
            step,
            &[(tag.into(), Value::Scalar(value as f32))],
        ))
    }

    /// A text summary `tag` at `step`, shown as preformatted text (each
    /// line indented four spaces: a Markdown code block).
    pub fn preformatted(&mut self, tag: &str, step: u64, text: &str) -> Result<()> {
        let block: String = text.lines().map(|l| format!("    {l}\n")).collect();
        let t = self.now();
        self.record(&record::summary_event(
            t,
            step,
            &[(tag.into(), Value::Text(&block))],
        ))
    }

    /// Makes the events written so far visible to readers.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| Error::io("writing", &self.path, e))
    }
}

/// The numbers of a JSON object, keyed `prefix/<path>`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}/{k}"), v, out);
            }
        }
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_owned(), x));
            }
        }
        _ => {}
    }
}

/// Records evaluation results of a model that belongs to a training run
/// (`model` is `run_dir/checkpoints/<step>` or `run_dir/final`, and
/// `run_dir/config.toml` does not turn `train.tensorboard` off) as scalars
/// `eval/<task>/<name>` at the model's step, in a new event file of
/// `run_dir/tensorboard`. Returns that file, or `None` for another model.
pub fn record_eval(model: &Path, task: &str, values: &[(&str, f64)]) -> Result<Option<PathBuf>> {
    let model = model
        .canonicalize()
        .map_err(|e| Error::io("opening", model, e))?;
    let (Some(parent), Some(name)) = (model.parent(), model.file_name()) else {
        return Ok(None);
    };
    let run_dir = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent()
    } else {
        Some(parent)
    };
    let Some(run_dir) = run_dir else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(run_dir.join("config.toml")) else {
        return Ok(None);
    };
    let Some(train) = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("train").cloned())
    else {
        return Ok(None);
    };
    if train.get("tensorboard").and_then(toml::Value::as_bool) == Some(false) {
        return Ok(None);
    }
    let step = if name == "final" {
        match train.get("steps").and_then(toml::Value::as_integer) {
            Some(s) => s as u64,
            None => return Ok(None),
        }
    } else if parent.ends_with("checkpoints") {
        crate::checkpoint::Checkpoint::open_manifest(&model)?.step()
    } else {
        return Ok(None);
    };
    let mut w = EventWriter::new_file(&run_dir.join("tensorboard"))?;
    for (k, v) in values {
        w.scalar(&format!("eval/{task}/{k}"), step, *v)?;
    }
    w.flush()?;
    Ok(Some(w.path))
}

/// Every number and text summary in the event files of `dir`, as
/// `(step, tag, value)` in file and write order: what a reader of the
/// directory sees.
pub fn read_dir(dir: &Path) -> Result<Vec<(u64, String, Decoded)>> {
    let mut out = Vec::new();
    for path in event_files(dir)? {
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        let invalid = |m: String| {
            Error::io(
                "reading",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, m),
            )
        };
        let (records, _) = record::read_records(&bytes).map_err(invalid)?;
        for (at, data) in records {
            out.extend(
                record::decode_summaries(data)
                    .ok_or_else(|| invalid(format!("record at byte {at} is not an Event")))?,
            );
        }
    }
    Ok(out)
}

/// The event files of `dir`, in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("reading", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Rewrites the event file `path` without its events of steps at or after
/// `start` and without an incomplete last record (left untouched when it
/// has neither).
fn drop_steps_from(path: &Path, start: u64) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let invalid = |m: String| {
        Error::io(
            "reading",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, m),
        )
    };
    let (records, cut) = record::read_records(&bytes).map_err(invalid)?;
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = false;
    for (at, data) in &records {
        let (step, summary) = record::event_info(data)
            .ok_or_else(|| invalid(format!("record at byte {at} is not an Event")))?;
        // The file_version header (no summary) stays.
        if summary && step >= start {
            dropped = true;
        } else {
            kept.extend_from_slice(&record::frame(data));
        }
    }
    if !dropped && cut.is_none() {
        return Ok(());
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, &kept).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "localhost".into())
}
