//! What a coordinator keeps in the run directory so that a coordinator
//! restarted with the same config and run directory resumes its job
//! (`coordinator.json`, replaced atomically: written to a temporary name,
//! synced, renamed).
//!
//! The workers' own state needs no help: they restore the last committed
//! checkpoint from the shared run directory, as after a lost worker. What
//! only the coordinator knows is kept here: the generation (a restarted
//! coordinator starts past every generation its predecessor used, so no
//! message or key of an old generation is taken for a new one), the last
//! checkpoint every worker agreed on, and the lost workers counted against
//! `coordinator.max_restarts` (a crash loop cannot reset the count).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file's name in the run directory.
pub const FILE: &str = "coordinator.json";

/// The format revision written.
const VERSION: u32 = 1;

/// A job's coordinator state, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobState {
    /// Format revision (1).
    pub version: u32,
    /// sha256 of the resolved job config: a restart must serve the same.
    pub config_digest: String,
    /// Workers in the job.
    pub world_size: u32,
    /// The newest generation a coordinator of this job used.
    pub generation: u64,
    /// The last checkpoint step every worker agreed on.
    pub last_committed: Option<u64>,
    /// Lost workers so far (against `coordinator.max_restarts`).
    pub restarts: u32,
    /// How many times a coordinator started this job.
    pub starts: u64,
    /// The job ended (every worker left, or it was stopped): the next
    /// coordinator in this run directory starts a new job.
    pub finished: bool,
}

impl JobState {
    /// A new job's state.
    pub fn new(config_digest: String, world_size: u32) -> JobState {
        JobState {
            version: VERSION,
            config_digest,
            world_size,
            generation: 0,
            last_committed: None,
            restarts: 0,
            starts: 1,
            finished: false,
        }
    }

    /// The state of the job under way in `run_dir`, if any: `None` when
    /// there is no file or its job finished. A file of another config or
    /// worker count is refused: resuming it would mix two jobs.
    pub fn resume(
        run_dir: &Path,
        config_digest: &str,
        world_size: u32,
    ) -> Result<Option<JobState>> {
        let path = run_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    action: "reading",
                    path,
                    source: e,
                });
            }
        };
        let bad = |message: String| Error::JobState {
            path: path.clone(),
            message,
        };
        let st: JobState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if st.version != VERSION {
            return Err(bad(format!(
                "version {}: this coordinator reads version {VERSION}",
                st.version
            )));
        }
        if st.finished {
            return Ok(None);
        }
        let remove = "use another train.run_dir, or remove the file to start a new job there";
        if st.config_digest != config_digest {
            return Err(bad(format!(
                "config_digest {}: the job under way there was started with another config \
                 (this one's digest is {config_digest}); restart the coordinator with the same \
                 config and overrides to resume it, or {remove}",
                st.config_digest
            )));
        }
        if st.world_size != world_size {
            return Err(bad(format!(
                "world_size {}: the job under way there has {} workers, not --workers {world_size}; {remove}",
                st.world_size, st.world_size
            )));
        }
        Ok(Some(st))
    }

    /// Writes the state to `run_dir` atomically.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(FILE);
        let tmp = run_dir.join(format!(".{FILE}.partial"));
        let io = |action: &'static str, path: &PathBuf, source: std::io::Error| Error::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| Error::JobState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        text.push('\n');
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io("writing", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming into place", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_resumes_only_for_the_same_job() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JobState::resume(dir.path(), "abc", 2).unwrap(), None);
        let mut st = JobState::new("abc".into(), 2);
        st.generation = 3;
        st.last_committed = Some(4);
        st.save(dir.path()).unwrap();
        assert_eq!(
            JobState::resume(dir.path(), "abc", 2).unwrap(),
            Some(st.clone())
        );
        let e = JobState::resume(dir.path(), "other", 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coordinator.json") && e.contains("another config"),
            "{e}"
        );
        let e = JobState::resume(dir.path(), "abc", 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("world_size 2"), "{e}");
        st.finished = true;
        st.save(dir.path()).unwrap();
        assert_eq!(JobState::resume(dir.path(), "other", 3).unwrap(), None);
        std::fs::write(dir.path().join(FILE), "{\"version\": 1").unwrap();
        let e = JobState::resume(dir.path(), "abc", 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("coordinator.json"), "{e}");
        assert!(!dir.path().join(format!(".{FILE}.partial")).exists());
    }
}
