//! Devices: the client a config asks for, where each partition of the mesh
//! lives, host arrays to per-device shards and back.

use pjrt::{Buffer, Client};

use crate::config::TrainConfig;
use crate::host::JobLayout;
use crate::shard::{extract, insert, shard_ranges};
use crate::step::{Plan, Slot};
use crate::{Error, Result};

/// Creates the client the config asks for. On CPU it has
/// `runtime.device_count` devices, or one when the count is unset.
pub fn make_client(cfg: &TrainConfig) -> Result<Client> {
    let backend = pjrt::install::Backend::parse(&cfg.runtime.backend)?;
    let plugin = load_plugin(cfg, backend)?;
    let mut options = Vec::new();
    if backend == pjrt::install::Backend::Cpu {
        options.push((
            "cpu_device_count",
            pjrt::OptionValue::Int(cfg.runtime.device_count.max(1) as i64),
        ));
    }
    if crate::gpu::is_cuda(&cfg.runtime.backend) {
        options.extend(crate::gpu::client_options(&cfg.runtime));
    }
    let client = Client::new(&plugin, &options)?;
    check_devices(cfg, &client)?;
    Ok(client)
}

/// Creates the client of process `process_id` of `processes` in a
/// multi-process TPU or GPU job: the plugin's distributed runtime exchanges
/// its topology through `store` (the coordinator's key-value store). The
/// CUDA plugin also takes `node_id` and `num_nodes`; libtpu joins the
/// hosts of a slice from the TPU VM's own environment (`TPU_WORKER_ID`,
/// `TPU_WORKER_HOSTNAMES`, and `MEGASCALE_*` across slices). The CPU
/// plugin cannot span processes and is refused.
pub fn make_pod_client(
    cfg: &TrainConfig,
    store: std::sync::Arc<dyn pjrt::KeyValueStore>,
    process_id: usize,
    processes: usize,
) -> Result<Client> {
    use pjrt::install::Backend;
    let backend = Backend::parse(&cfg.runtime.backend)?;
    let options = match backend {
        Backend::Cpu => {
            return Err(Error::config(
                "runtime",
                "runtime.backend",
                "\"cpu\": the CPU plugin cannot span processes; CPU workers train data-parallel \
                 through the coordinator instead"
                    .to_string(),
            ));
        }
        Backend::Cuda12 | Backend::Cuda13 => {
            let mut o = vec![
                ("node_id", pjrt::OptionValue::Int(process_id as i64)),
                ("num_nodes", pjrt::OptionValue::Int(processes as i64)),
            ];
            o.extend(crate::gpu::client_options(&cfg.runtime));
            o
        }
        Backend::Tpu => Vec::new(),
    };
    let plugin = load_plugin(cfg, backend)?;
    let client = Client::with_key_value_store(&plugin, &options, store)?;
    check_devices(cfg, &client)?;
    Ok(client)
}

fn load_plugin(
    cfg: &TrainConfig,
    backend: pjrt::install::Backend,
) -> Result<std::sync::Arc<pjrt::Plugin>> {
    let path = pjrt::install::resolve(backend, cfg.runtime.plugin.as_deref())?;
    Ok(pjrt::Plugin::load(path)?)
}

/// The client has the devices the mesh needs (all processes together).
fn check_devices(cfg: &TrainConfig, client: &Client) -> Result<()> {
    let have = client.global_devices().len();
    if have < cfg.runtime.device_count {
        return Err(Error::config(
            "runtime",
            "runtime.device_count",
            format!(
                "{} devices asked, the {} plugin has {have}",
                cfg.runtime.device_count,
                client.platform_name(),
            ),
        ));
    }
    Ok(())
}

/// Where every partition of the mesh lives, and which of them this
/// process runs: the partitions of its own host, or of every emulated host
/// (`runtime.emulate_hosts`, CPU only) it stands in for.
pub(crate) struct Placement {
    /// The job's partitions, devices and hosts.
    pub layout: JobLayout,
    /// The hosts this process runs (one, except when emulating).
    pub hosts: Vec<usize>,
    /// Client device index of partition `p` when this process runs it.
    pub device_of: Vec<Option<usize>>,
}

/// Per-partition values of which this process holds its own (`None` for
/// other hosts' partitions).
pub(crate) type PerPartition<T> = Vec<Option<T>>;

impl Placement {
    /// Orders the job's devices along the torus (chip coordinates where
    /// the plugin reports them, as `meshtrain plan` does) and finds this
    /// process's partitions.
    pub(crate) fn new(cfg: &TrainConfig, client: &Client, plan: &Plan) -> Result<Placement> {
        let n = plan.mesh.devices() as usize;
        let global = client.global_devices();
        if global.len() < n {
            return Err(Error::config(
                "runtime",
                "runtime.device_count",
                format!(
                    "the mesh needs {n} devices, the {} client has {}",
                    client.platform_name(),
                    global.len()
                ),
            ));
        }
        let devices = &global[..n];
        let emulate = cfg.runtime.emulate_hosts;
        let (layout, hosts) = if emulate > 1 {
            // Emulated hosts: consecutive devices of the one CPU client.
            let per = n / emulate;
            let position = |d: &pjrt::TopologyDevice| {
                devices
                    .iter()
                    .position(|x| x.info.id == d.info.id)
                    // invariant: the placement lists only the client's devices.
                    .expect("one of the devices")
                    / per
            };
            let layout = JobLayout::new(plan, devices, cfg.tensor_along(), position)?;
            (layout, (0..emulate).collect())
        } else {
            let layout = JobLayout::new(plan, devices, cfg.tensor_along(), |d| {
                d.info.process_index.max(0) as usize
            })?;
            (layout, vec![client.process_index().max(0) as usize])
        };
        let device_of = (0..n)
            .map(|p| {
                if !hosts.contains(&layout.host_of[p]) {
                    return Ok(None);
                }
                let id = layout.order[p];
                client
                    .devices()
                    .iter()
                    .position(|d| d.id as i64 == id)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::config(
                            "runtime",
                            "runtime.device_count",
                            format!(
                                "device {id} belongs to process {} but this client cannot address it",
                                layout.host_of[p]
                            ),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Placement {
            layout,
            hosts,
            device_of,
        })
    }

    /// A single process running every partition of `layout` (one host).
    pub(crate) fn one_host(layout: JobLayout, client: &Client) -> Result<Placement> {
        let device_of = layout
            .order
            .iter()
            .map(|id| {
                client
                    .devices()
                    .iter()
                    .position(|d| d.id as i64 == *id)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::config(
                            "runtime",
                            "runtime.device_count",
                            format!("device {id} is not addressable by this process"),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Placement {
            layout,
            hosts: vec![0],
            device_of,
        })
    }

    /// Whether this process runs every partition (one host, not emulated).
    pub(crate) fn all_local(&self) -> bool {
        self.layout.hosts == 1
    }

    /// The partitions host `host` owns, with their client devices.
    pub(crate) fn parts_of(&self, host: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.layout
            .partitions_of(host)
            .into_iter()
            .filter_map(|p| Some((p, self.device_of[p]?)))
    }

    /// This process's partitions with their client devices.
    pub(crate) fn local_parts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.device_of
            .iter()
            .enumerate()
            .filter_map(|(p, d)| Some((p, (*d)?)))
    }
}

/// Puts a full host array's shard on each of this process's partitions.
pub(crate) fn put<T: pjrt::NativeType>(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    slot: &Slot,
    data: &[T],
) -> Result<PerPartition<Buffer>> {
    let mut out: PerPartition<Buffer> = (0..at.device_of.len()).map(|_| None).collect();
    for (p, device) in at.local_parts() {
        let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
        let dims: Vec<i64> = r.iter().map(|x| x.len() as i64).collect();
        out[p] = Some(client.buffer_from_host(&extract(data, &slot.shape, &r), &dims, device)?);
    }
    Ok(out)
}

/// Puts host `host`'s batch rows on its partitions: `data` holds the rows
/// `rows` (global row indices `a * micro + i`, ascending) of the batch
/// slot `[accumulation, micro, seq_len]`, each `seq_len` long; every
/// partition's box is made of whole rows the host loaded.
#[allow(clippy::too_many_arguments)] // the rows' slot, their host and where they go
pub(crate) fn put_rows<T: pjrt::NativeType>(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    host: usize,
    slot: &Slot,
    rows: &[usize],
    data: &[T],
    out: &mut PerPartition<Buffer>,
) -> Result<()> {
    let (micro, t) = (slot.shape[1], slot.shape[2]);
    for (p, device) in at.parts_of(host) {
        let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
        let mut piece = Vec::with_capacity(r.iter().map(|x| x.len()).product());
        for a in r[0].clone() {
            for i in r[1].clone() {
                let local = rows
                    .binary_search(&(a * micro + i))
                    // invariant: a host's row list covers every row its partitions hold (JobLayout).
                    .expect("a host loads every row its partitions hold");
                piece.extend_from_slice(&data[local * t..(local + 1) * t][r[2].clone()]);
            }
        }
        let dims: Vec<i64> = r.iter().map(|x| x.len() as i64).collect();
        out[p] = Some(client.buffer_from_host(&piece, &dims, device)?);
    }
    Ok(())
}

/// Gathers one buffer per partition (all local) back into a host array.
pub(crate) fn get(plan: &Plan, slot: &Slot, shards: &[&Buffer]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; slot.shape.iter().product()];
    get_into(plan, slot, shards, &mut out)?;
    Ok(out)
}

/// Gathers one buffer per partition (all local) into `out` (the slot's size).
pub(crate) fn get_into(
    plan: &Plan,
    slot: &Slot,
    shards: &[&Buffer],
    out: &mut [f32],
) -> Result<()> {
    for (p, buf) in shards.iter().enumerate() {
        let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
        insert(out, &slot.shape, &r, &buf.to_host::<f32>()?);
    }
    Ok(())
}

/// Compiles `mlir` for the plan's devices in `order` (partition order) and
/// returns it with the partition of each of its argument lists.
pub(crate) fn compile(
    client: &Client,
    cfg: &TrainConfig,
    plan: &Plan,
    order: &[i64],
    mlir: &str,
) -> Result<(pjrt::LoadedExecutable, Vec<usize>)> {
    let n = plan.mesh.devices();
    let mut options = if n > 1 {
        pjrt::CompileOptions {
            device_assignment: Some(vec![order.to_vec()]),
            ..pjrt::CompileOptions::spmd(n)
        }
    } else {
        pjrt::CompileOptions::single()
    };
    options.xla_options = cfg.runtime.xla_options(cfg.compute_options()?.dtype)?;
    let exe = client.compile(mlir, &options)?;
    let partition_of = exe
        .device_ids()?
        .iter()
        .map(|id| {
            order
                .iter()
                .position(|o| *o == *id as i64)
                // invariant: the executable was compiled for this device assignment.
                .expect("executable devices are the assigned ones")
        })
        .collect();
    Ok((exe, partition_of))
}
