//! The training state on the devices: per partition, the parameters, both
//! AdamW moments (`3P` buffers, in [`GROUPS`] order) and the step counter.
//! Made fresh, restored from a checkpoint (under any mesh), snapshotted for
//! a checkpoint, or gathered into host parameters.

use std::collections::BTreeSet;

use pjrt::{Buffer, Client};

use crate::checkpoint::{Checkpoint, MeshRecord, Piece, Snapshot, SnapshotTensor};
use crate::device::{Placement, get, put};
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
) -> Result<Vec<DeviceState>> {
    let model = cfg.model.resolve()?;
    let values = crate::init::init_params(&model, &cfg.model.init, cfg.model.seed)?;
    from_host(client, plan, at, params, 0, |group, i| {
        Ok(if group == 0 {
            values[i].clone()
        } else {
            vec![0f32; values[i].len()]
        })
    })
}

/// The state saved in `ckpt`, split under this run's mesh.
pub(crate) fn restore(
    ckpt: &Checkpoint,
    client: &Client,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
) -> Result<Vec<DeviceState>> {
    let expected = GROUPS.len() * params.len();
    if ckpt.manifest.tensors.len() != expected {
        return Err(Error::Checkpoint {
            path: ckpt.dir.clone(),
            message: format!(
                "holds {} tensors, this model has {expected} (parameters and two moments)",
                ckpt.manifest.tensors.len()
            ),
        });
    }
    from_host(client, plan, at, params, ckpt.step(), |group, i| {
        let slot = &params[i];
        let name = format!("{}/{}", GROUPS[group], slot.name);
        let record = ckpt.record(&name)?;
        if record.shape != slot.shape {
            return Err(Error::Checkpoint {
                path: ckpt.dir.clone(),
                message: format!(
                    "tensor {name} has shape {:?}, this model's is {:?}",
                    record.shape, slot.shape
                ),
            });
        }
        ckpt.tensor(&name)
    })
}

/// Builds the state from one host array per (group, parameter).
fn from_host(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
    steps_done: u64,
    mut value: impl FnMut(usize, usize) -> Result<Vec<f32>>,
) -> Result<Vec<DeviceState>> {
    let n = plan.mesh.devices() as usize;
    let mut state: Vec<DeviceState> = (0..n).map(|_| Vec::new()).collect();
    for group in 0..GROUPS.len() {
        for (i, slot) in params.iter().enumerate() {
            let data = value(group, i)?;
            for (p, buf) in put(client, plan, at, slot, &data)?.into_iter().enumerate() {
                state[p].push(buf);
            }
        }
    }
    let counter = i32::try_from(steps_done).map_err(|_| Error::Checkpoint {
        path: Default::default(),
        message: format!("step {steps_done} does not fit the program's i32 step counter"),
    })?;
    for (p, s) in state.iter_mut().enumerate() {
        s.push(client.buffer_from_host(&[counter], &[], at.device_of[p])?);
    }
    Ok(state)
}

/// Copies the state off the devices: each distinct box of each tensor once
/// (from the lowest partition holding it).
pub(crate) fn snapshot(
    cfg: &TrainConfig,
    plan: &Plan,
    params: &[Slot],
    state: &[DeviceState],
    loader: data::LoaderState,
) -> Result<Snapshot> {
    let p_count = params.len();
    let counter = state[0][GROUPS.len() * p_count].to_host::<i32>()?[0];
    let mut tensors = Vec::with_capacity(GROUPS.len() * p_count);
    for (group, prefix) in GROUPS.iter().enumerate() {
        for (i, slot) in params.iter().enumerate() {
            let mut seen = BTreeSet::new();
            let mut pieces = Vec::new();
            for (p, s) in state.iter().enumerate() {
                let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
                let start: Vec<usize> = r.iter().map(|x| x.start).collect();
                if seen.insert(start.clone()) {
                    pieces.push(Piece {
                        device: p,
                        start,
                        shape: r.iter().map(|x| x.len()).collect(),
                        data: s[group * p_count + i].to_host::<f32>()?,
                    });
                }
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
        loader,
        seed: cfg.model.seed,
        config_toml: cfg.to_toml(),
        tensors,
    })
}

/// The parameters as host arrays, in `params` order.
pub(crate) fn gather_params(
    plan: &Plan,
    params: &[Slot],
    state: &[DeviceState],
) -> Result<Vec<Vec<f32>>> {
    params
        .iter()
        .enumerate()
        .map(|(i, slot)| get(plan, slot, &state.iter().map(|s| &s[i]).collect::<Vec<_>>()))
        .collect()
}
