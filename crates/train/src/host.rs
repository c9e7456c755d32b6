//! Which host holds what: the device at every mesh partition, the host
//! (process) that owns each device, the rows of the global batch a host's
//! partitions need, and the checkpoint boxes it writes. Pure arithmetic
//! over the mesh and the device list, so the same layout is computed on
//! every host of a pod, and in tests from libtpu's topology alone.

use std::collections::BTreeSet;

use pjrt::TopologyDevice;

use crate::shard::shard_ranges;
use crate::step::{Plan, Slot};
use crate::{Error, Result};

/// The job's partitions, their devices and their hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLayout {
    /// Device id of each partition (mesh order, `tensor` fastest).
    pub order: Vec<i64>,
    /// Host (process) owning each partition.
    pub host_of: Vec<usize>,
    /// Number of hosts.
    pub hosts: usize,
}

/// A device as the mesh orders it: id, torus coordinates, slice.
pub fn mesh_device(d: &TopologyDevice) -> mesh::Device {
    mesh::Device {
        id: d.info.id as i64,
        coords: d.ints("coords").map(<[i64]>::to_vec).unwrap_or_default(),
        slice: d.int("slice_index").unwrap_or(0),
    }
}

impl JobLayout {
    /// Orders `devices` along the torus (by chip coordinates where the
    /// plugin reports them, as `meshtrain plan` does; by id otherwise) and
    /// gives each partition the host `host_of(device)` names. Hosts are
    /// numbered `0..hosts`, and every host must own a partition.
    pub fn new(
        plan: &Plan,
        devices: &[TopologyDevice],
        tensor_along: mesh::TorusAxis,
        host_of: impl Fn(&TopologyDevice) -> usize,
    ) -> Result<JobLayout> {
        let mesh_devices: Vec<mesh::Device> = devices.iter().map(mesh_device).collect();
        let order = mesh::device_order(&plan.mesh, &mesh_devices, tensor_along)?;
        let host_of: Vec<usize> = order
            .iter()
            .map(|id| {
                let d = devices
                    .iter()
                    .find(|d| d.info.id as i64 == *id)
                    // invariant: the order was built from these devices' ids.
                    .expect("the order lists the given devices");
                host_of(d)
            })
            .collect();
        let hosts = host_of.iter().copied().collect::<BTreeSet<_>>();
        let count = hosts.len();
        if hosts.iter().copied().ne(0..count) {
            return Err(Error::config(
                "runtime",
                "runtime.device_count",
                format!(
                    "the mesh's devices belong to hosts {hosts:?}; every host 0..{count} must own one"
                ),
            ));
        }
        Ok(JobLayout {
            order,
            host_of,
            hosts: count,
        })
    }

    /// The partitions host `host` owns, ascending.
    pub fn partitions_of(&self, host: usize) -> Vec<usize> {
        (0..self.order.len())
            .filter(|&p| self.host_of[p] == host)
            .collect()
    }

    /// The rows of the global batch host `host` loads: every row (as
    /// `micro_batch_index * micro_rows + row`, ascending) that one of its
    /// partitions holds part of, given the batch `slot` of shape
    /// `[accumulation, micro_rows, seq_len]`. A row replicated over several
    /// hosts (e.g. a `tensor` group spanning hosts) is loaded by each.
    pub fn batch_rows(&self, plan: &Plan, slot: &Slot, host: usize) -> Vec<usize> {
        let micro = slot.shape[1];
        let mut rows = BTreeSet::new();
        for p in self.partitions_of(host) {
            let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
            for a in r[0].clone() {
                rows.extend(r[1].clone().map(|i| a * micro + i));
            }
        }
        rows.into_iter().collect()
    }

    /// Whether partition `p` writes its box of `slot` to a checkpoint: of
    /// the partitions holding the same box, the lowest writes it.
    pub fn writes_box(&self, plan: &Plan, slot: &Slot, p: usize) -> bool {
        let mine = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
        (0..p).all(|q| shard_ranges(&plan.mesh, &slot.shape, &slot.axes, q) != mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_devices(n: usize) -> Vec<TopologyDevice> {
        (0..n)
            .map(|i| TopologyDevice {
                info: pjrt::DeviceInfo {
                    id: i as i32,
                    kind: "cpu".into(),
                    process_index: 0,
                },
                attributes: vec![],
            })
            .collect()
    }

    fn plan(data: i64, fsdp: i64, tensor: i64) -> Plan {
        let model = gemma::GemmaConfig::tiny();
        let mesh = mesh::MeshConfig { data, fsdp, tensor }
            .resolve(data * fsdp * tensor)
            .unwrap();
        Plan::new(&model, mesh, mesh::Rules::default())
    }

    fn batch_slot(a: usize, micro: usize) -> Slot {
        Slot {
            name: "tokens".into(),
            shape: vec![a, micro, 16],
            dtype: hlo::DType::I32,
            axes: vec![vec![], vec!["data".into(), "fsdp".into()], vec![]],
        }
    }

    #[test]
    fn four_hosts_of_two_devices_load_disjoint_rows() {
        let p = plan(2, 4, 1);
        let devs = cpu_devices(8);
        let l = JobLayout::new(&p, &devs, mesh::TorusAxis::X, |d| d.info.id as usize / 2).unwrap();
        assert_eq!(l.hosts, 4);
        assert_eq!(l.partitions_of(1), vec![2, 3]);
        let slot = batch_slot(2, 8);
        let all: Vec<Vec<usize>> = (0..4).map(|h| l.batch_rows(&p, &slot, h)).collect();
        // Micro-batches of 8 rows, one row per partition: host 1 holds rows
        // 2 and 3 of each.
        assert_eq!(all[1], vec![2, 3, 10, 11]);
        let mut union: Vec<usize> = all.concat();
        union.sort();
        assert_eq!(union, (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn tensor_replicas_load_the_same_rows_and_write_each_box_once() {
        // tensor = 2 spans the two devices of each host.
        let p = plan(2, 2, 2);
        let devs = cpu_devices(8);
        let l = JobLayout::new(&p, &devs, mesh::TorusAxis::X, |d| d.info.id as usize / 4).unwrap();
        let slot = batch_slot(1, 4);
        assert_eq!(l.batch_rows(&p, &slot, 0), vec![0, 1]);
        assert_eq!(l.batch_rows(&p, &slot, 1), vec![2, 3]);
        let norm = Slot {
            name: "norm".into(),
            shape: vec![16],
            dtype: hlo::DType::F32,
            axes: vec![vec![]],
        };
        let writers: Vec<usize> = (0..8).filter(|&q| l.writes_box(&p, &norm, q)).collect();
        assert_eq!(writers, vec![0], "a replicated tensor is written once");
    }

    #[test]
    fn a_host_without_devices_is_refused() {
        let p = plan(1, 4, 1);
        let devs = cpu_devices(4);
        let e =
            JobLayout::new(&p, &devs, mesh::TorusAxis::X, |d| 2 * d.info.id as usize).unwrap_err();
        assert!(e.to_string().contains("every host"), "{e}");
    }
}
