//! `train.profile_steps = [first, last]`: the host side of those steps as
//! a Chrome trace (`run_dir/profile/host_trace.<process>.json`, which
//! Perfetto and `chrome://tracing` open), and an XSpace for TensorBoard's
//! profile plugin (`run_dir/tensorboard/plugins/profile/<time>/<host>.xplane.pb`):
//! XLA's device profile where the PJRT plugin has a profiler, else the
//! host spans.

use std::path::PathBuf;
use std::time::Instant;

use super::files::write_file;
use crate::{Error, Result};

/// One host span: a named part of a step.
struct Span {
    name: &'static str,
    step: u64,
    start: Instant,
    end: Instant,
}

/// The profile of this process's run.
pub(super) struct StepProfile {
    window: Option<(u64, u64)>,
    run_dir: PathBuf,
    process: usize,
    spans: Vec<Span>,
    t0: Instant,
    /// `t0` in nanoseconds since the Unix epoch.
    t0_unix_ns: u64,
    device: Option<pjrt::Profiler>,
}

impl StepProfile {
    /// The profile `train.profile_steps` asks for (`[]`: none).
    pub(super) fn new(steps: &[u64], run_dir: PathBuf, process: usize) -> StepProfile {
        StepProfile {
            window: match steps {
                [first, last] => Some((*first, *last)),
                _ => None,
            },
            run_dir,
            process,
            spans: Vec::new(),
            t0: Instant::now(),
            t0_unix_ns: unix_ns(),
            device: None,
        }
    }

    /// Whether step `s` is in the profiled window.
    pub(super) fn active(&self, s: u64) -> bool {
        self.window.is_some_and(|(a, b)| (a..=b).contains(&s))
    }

    /// Before step `s`: at the window's first step, starts the plugin's
    /// profiler (or says why there is none).
    pub(super) fn begin_step(
        &mut self,
        s: u64,
        client: &pjrt::Client,
        say: impl Fn(String),
    ) -> Result<()> {
        if self.window.map(|w| w.0) != Some(s) {
            return Ok(());
        }
        self.t0 = Instant::now();
        self.t0_unix_ns = unix_ns();
        let plugin = client.plugin();
        self.device = pjrt::Profiler::start(plugin)?;
        if self.device.is_none() {
            say(format!(
                "profiling steps {s}..={}: host spans only, the {} plugin ({}) has no PJRT profiler \
                 extension (its extension chain holds types {:?}; the profiler is type {})",
                // invariant: start() runs only inside a configured window.
                self.window.expect("checked").1,
                client.platform_name(),
                plugin.path().display(),
                plugin.extension_types(),
                PROFILER_EXTENSION
            ));
        }
        Ok(())
    }

    /// Records the span `name` of step `s`, from `start` to now.
    pub(super) fn span(&mut self, s: u64, name: &'static str, start: Instant) {
        if self.active(s) {
            self.spans.push(Span {
                name,
                step: s,
                start,
                end: Instant::now(),
            });
        }
    }

    /// After step `s`: at the window's last step, stops the device
    /// profiler and writes the files; returns what was written.
    pub(super) fn end_step(&mut self, s: u64) -> Result<Vec<PathBuf>> {
        if self.window.map(|w| w.1) != Some(s) {
            return Ok(Vec::new());
        }
        // The device profile, or else the host spans as an XSpace, so that
        // TensorBoard's profile tab shows the steps either way.
        let xspace = match self.device.take() {
            Some(p) => p.stop()?,
            None => self.host_xspace(),
        };
        let dir = self
            .run_dir
            .join("tensorboard/plugins/profile")
            .join(utc_stamp());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let path = dir.join(format!("{}.xplane.pb", host_label(self.process)));
        write_file(&path, &xspace)?;
        let mut written = vec![path];
        let dir = self.run_dir.join("profile");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let path = dir.join(format!("host_trace.{}.json", self.process));
        write_file(&path, self.chrome_trace().to_string().as_bytes())?;
        written.push(path);
        Ok(written)
    }

    /// The spans as a `tensorflow.profiler.XSpace` with one plane,
    /// `/host:CPU`, and one line of them (field numbers from TSL's
    /// `xplane.proto`).
    fn host_xspace(&self) -> Vec<u8> {
        use crate::tensorboard::record::{bytes_field, varint_field};
        let ps = |t: Instant| t.saturating_duration_since(self.t0).as_nanos() as u64 * 1000;
        let mut names: Vec<&str> = self.spans.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        // invariant: names lists every span name.
        let id = |n: &str| names.iter().position(|m| *m == n).expect("listed") as u64 + 1;
        let mut line = Vec::new();
        varint_field(&mut line, 1, 1); // id
        bytes_field(&mut line, 2, b"meshtrain steps"); // name
        varint_field(&mut line, 3, self.t0_unix_ns); // timestamp_ns
        for s in &self.spans {
            let mut e = Vec::new();
            varint_field(&mut e, 1, id(s.name)); // metadata_id
            varint_field(&mut e, 2, ps(s.start)); // offset_ps
            varint_field(&mut e, 3, ps(s.end) - ps(s.start)); // duration_ps
            bytes_field(&mut line, 4, &e); // events
        }
        let end = self.spans.iter().map(|s| ps(s.end)).max().unwrap_or(0);
        varint_field(&mut line, 9, end); // duration_ps
        varint_field(&mut line, 10, 1); // display_id
        let mut plane = Vec::new();
        varint_field(&mut plane, 1, 0); // id
        bytes_field(&mut plane, 2, b"/host:CPU"); // name
        bytes_field(&mut plane, 3, &line); // lines
        for n in &names {
            let mut meta = Vec::new();
            varint_field(&mut meta, 1, id(n));
            bytes_field(&mut meta, 2, n.as_bytes());
            let mut entry = Vec::new(); // map<int64, XEventMetadata> entry
            varint_field(&mut entry, 1, id(n));
            bytes_field(&mut entry, 2, &meta);
            bytes_field(&mut plane, 4, &entry); // event_metadata
        }
        let mut space = Vec::new();
        bytes_field(&mut space, 1, &plane); // planes
        bytes_field(&mut space, 4, host_label(self.process).as_bytes()); // hostnames
        space
    }

    /// The spans in the Chrome trace event format (complete events, in
    /// microseconds from the window's start).
    fn chrome_trace(&self) -> serde_json::Value {
        let us = |t: Instant| t.saturating_duration_since(self.t0).as_secs_f64() * 1e6;
        let mut events = vec![serde_json::json!({
            "name": "process_name", "ph": "M", "pid": self.process,
            "args": {"name": format!("meshtrain process {}", self.process)},
        })];
        events.extend(self.spans.iter().map(|s| {
            serde_json::json!({
                "name": s.name, "cat": "host", "ph": "X",
                "ts": us(s.start), "dur": us(s.end) - us(s.start),
                "pid": self.process, "tid": 0, "args": {"step": s.step},
            })
        }));
        serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `PJRT_Extension_Type_Profiler`.
const PROFILER_EXTENSION: u32 = 1;

/// This host's file name in a profile run: TensorBoard shows one per host.
fn host_label(process: usize) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() || host.contains('/') {
        "localhost".into()
    } else {
        host
    };
    format!("{host}.p{process}")
}

/// A profile run's directory name, as TensorBoard's profile plugin names
/// them (`YYYY_MM_DD_HH_MM_SS`, UTC).
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
