//! The training state on the devices: per partition, the parameters, both
//! AdamW moments (`3P` buffers, in [`GROUPS`] order) and the step counter.
//! Only this process's partitions hold buffers. Made fresh, restored from a
//! checkpoint (under any mesh, each host reading only its own boxes),
//! snapshotted per host for a checkpoint, or gathered into host parameters.

use pjrt::{Buffer, Client};

use crate::checkpoint::{Checkpoint, MeshRecord, Piece, Snapshot, SnapshotTensor};
use crate::device::{PerPartition, Placement, get, put};
use crate::shard::shard_ranges;
use crate::step::{Plan, Slot};
use crate::{Error, Result, TrainConfig};

/// One partition's state: params, m, v (3P buffers) and the step counter.
pub(crate) type DeviceState = Vec<Buffer>;

/// Checkpoint name prefixes of the three groups of `P` buffers.
pub(crate) const GROUPS: [&str; 3] = ["params", "m", "v"];

/// Parameters from `model.init`, zero moments, step 0.
pub(crate) fn initial(
    cfg: &TrainConfig,
    client: &Client,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
) -> Result<PerPartition<DeviceState>> {
    let model = cfg.model.resolve()?;
    let values = crate::init::init_params(&model, &cfg.model.init, cfg.model.seed)?;
    let mut state = empty(at);
    for group in 0..GROUPS.len() {
        for (i, slot) in params.iter().enumerate() {
            let zeros;
            let data = if group == 0 {
                &values[i]
            } else {
                zeros = vec![0f32; values[i].len()];
                &zeros
            };
            for (p, buf) in put(client, plan, at, slot, data)?.into_iter().enumerate() {
                if let Some(buf) = buf {
                    // invariant: state is built for local partitions only.
                    state[p].as_mut().expect("local").push(buf);
                }
            }
        }
    }
    push_counter(client, at, &mut state, 0)?;
    Ok(state)
}

/// The state saved in `ckpt`, split under this run's mesh: each host of
/// this process reads only the boxes its partitions hold, through its own
/// reader (so it verifies only the files it reads). Returns the state and
/// the checkpoint bytes each host read.
pub(crate) fn restore(
    ckpt: &Checkpoint,
    client: &Client,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
) -> Result<(PerPartition<DeviceState>, Vec<u64>)> {
    let expected = GROUPS.len() * params.len();
    if ckpt.manifest.tensors.len() != expected {
        return Err(ckpt_error(
            ckpt,
            format!(
                "holds {} tensors, this model has {expected} (parameters and two moments)",
                ckpt.manifest.tensors.len()
            ),
        ));
    }
    for group in GROUPS {
        for slot in params {
            let name = format!("{group}/{}", slot.name);
            let record = ckpt.record(&name)?;
            if record.shape != slot.shape {
                return Err(ckpt_error(
                    ckpt,
                    format!(
                        "tensor {name} has shape {:?}, this model's is {:?}",
                        record.shape, slot.shape
                    ),
                ));
            }
        }
    }
    let mut state = empty(at);
    let mut bytes_read = Vec::new();
    for &host in &at.hosts {
        // Emulated hosts each do what a host of their own does: open the
        // manifest, read (and verify) the files holding their boxes.
        let own;
        let reader = if at.hosts.len() == 1 {
            ckpt
        } else {
            own = Checkpoint::open_manifest(&ckpt.dir)?;
            &own
        };
        for (p, device) in at.parts_of(host) {
            // invariant: state is built for local partitions only.
            let s = state[p].as_mut().expect("local");
            for group in GROUPS {
                for slot in params {
                    let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
                    let data = reader.read_box(&format!("{group}/{}", slot.name), &r)?;
                    let dims: Vec<i64> = r.iter().map(|x| x.len() as i64).collect();
                    s.push(client.buffer_from_host(&data, &dims, device)?);
                }
            }
        }
        bytes_read.push(reader.bytes_read());
    }
    push_counter(client, at, &mut state, ckpt.step())?;
    Ok((state, bytes_read))
}

fn ckpt_error(ckpt: &Checkpoint, message: String) -> Error {
    Error::Checkpoint {
        path: ckpt.dir.clone(),
        message,
    }
}

/// Empty buffer lists for this process's partitions.
fn empty(at: &Placement) -> PerPartition<DeviceState> {
    at.device_of.iter().map(|d| d.map(|_| Vec::new())).collect()
}

/// Appends the step counter to every local partition's state.
fn push_counter(
    client: &Client,
    at: &Placement,
    state: &mut PerPartition<DeviceState>,
    steps_done: u64,
) -> Result<()> {
    let counter = i32::try_from(steps_done).map_err(|_| Error::Checkpoint {
        path: Default::default(),
        message: format!("step {steps_done} does not fit the program's i32 step counter"),
    })?;
    for (p, device) in at.local_parts() {
        state[p]
            .as_mut()
            // invariant: state is built for local partitions only.
            .expect("local")
            .push(client.buffer_from_host(&[counter], &[], device)?);
    }
    Ok(())
}

/// Copies host `host`'s part of the state off the devices: each box its
/// partitions write (see [`crate::host::JobLayout::writes_box`]), and the
/// loader states of the rows it loads.
pub(crate) fn snapshot(
    cfg: &TrainConfig,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
    state: &PerPartition<DeviceState>,
    host: usize,
    loader_rows: Vec<(usize, data::LoaderState)>,
) -> Result<Snapshot> {
    let p_count = params.len();
    let parts: Vec<(usize, usize)> = at.parts_of(host).collect();
    // invariant: state is built for local partitions only.
    let first = state[parts[0].0].as_ref().expect("local");
    let counter = first[GROUPS.len() * p_count].to_host::<i32>()?[0];
    let mut tensors = Vec::with_capacity(GROUPS.len() * p_count);
    for (group, prefix) in GROUPS.iter().enumerate() {
        for (i, slot) in params.iter().enumerate() {
            let mut pieces = Vec::new();
            for &(p, _) in &parts {
                if !at.layout.writes_box(plan, slot, p) {
                    continue;
                }
                let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
                pieces.push(Piece {
                    device: p,
                    start: r.iter().map(|x| x.start).collect(),
                    shape: r.iter().map(|x| x.len()).collect(),
                    // invariant: state is built for local partitions only.
                    data: state[p].as_ref().expect("local")[group * p_count + i]
                        .to_host::<f32>()?,
                });
            }
            tensors.push(SnapshotTensor {
                name: format!("{prefix}/{}", slot.name),
                shape: slot.shape.clone(),
                pieces,
            });
        }
    }
    Ok(Snapshot {
        step: counter as u64,
        mesh: MeshRecord {
            data: plan.mesh.data,
            fsdp: plan.mesh.fsdp,
            tensor: plan.mesh.tensor,
        },
        loader_rows,
        seed: cfg.model.seed,
        config_toml: cfg.to_toml(),
        tensors,
    })
}

/// The parameters as host arrays, in `params` order (every partition local).
pub(crate) fn gather_params(
    plan: &Plan,
    params: &[Slot],
    state: &PerPartition<DeviceState>,
) -> Result<Vec<Vec<f32>>> {
    let local: Vec<&DeviceState> = state
        .iter()
        .map(|s| {
            s.as_ref()
                // invariant: gathered only when every partition is local (checked by the caller).
                .expect("gathered only when every partition is local")
        })
        .collect();
    params
        .iter()
        .enumerate()
        .map(|(i, slot)| get(plan, slot, &local.iter().map(|s| &s[i]).collect::<Vec<_>>()))
        .collect()
}
