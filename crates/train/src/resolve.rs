//! What a config may leave to the machine it runs on: the device count
//! (every device of the plugin, or of the topology when planning) and the
//! place of the slices of a multi-slice job on the mesh.

use crate::config::TrainConfig;
use crate::{Error, Result};

impl TrainConfig {
    /// The config with its device count known. Unset (0),
    /// `runtime.device_count` becomes `available`, the devices of `what`
    /// (e.g. `"the tpu plugin"`), and everything that depends on it is
    /// validated again; `source` names the config in errors. A set count
    /// may use fewer devices than there are, not more.
    pub fn with_device_count(
        &self,
        available: usize,
        what: &str,
        source: &str,
    ) -> Result<TrainConfig> {
        let mut cfg = self.clone();
        let given = cfg.runtime.device_count;
        if given > available {
            return Err(Error::config(
                source,
                "runtime.device_count",
                format!("{given} devices asked, {what} has {available}"),
            ));
        }
        let devices_from = if given == 0 {
            cfg.runtime.device_count = available;
            format!("{what} (runtime.device_count is unset: every device)")
        } else {
            "runtime.device_count".to_string()
        };
        cfg.check(source, &devices_from)
            .map_err(|e| e.blamed_on(|_| source.to_string()))?;
        Ok(cfg)
    }

    /// Puts a job on `slices` slices joined over the data-center network,
    /// whose `data` mesh axis spans them. A config that does not place the
    /// slices itself (`mesh.data = 1`, as a one-slice config has) gets
    /// `mesh.data = slices`, one data replica per slice; with
    /// `scale_batch`, `data.batch_size` is multiplied by `slices` too, so
    /// every slice trains the batch the config gives (each data replica's
    /// share stays the same); without, it stays the job's batch and is
    /// split over the slices. A config that sets `mesh.data` is taken as
    /// it is: its `data.batch_size` is already the job's.
    pub fn place_slices(&mut self, slices: usize, scale_batch: bool) -> Result<()> {
        if slices == 0 {
            return Err(Error::config("--slices", "0", "expected at least 1"));
        }
        if slices == 1 || self.mesh.data != 1 {
            return Ok(());
        }
        self.mesh.data = slices as i64;
        if scale_batch {
            self.data.batch_size *= slices;
        }
        Ok(())
    }
}
