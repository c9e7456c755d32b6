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
    let values = gemma::to_layout(&model, plan.layout(), values)?;
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
    // Every stored tensor is one of this model's, in either layout.
    let names: std::collections::BTreeSet<String> = GROUPS
        .iter()
        .flat_map(|g| params.iter().map(move |s| format!("{g}/{}", s.name)))
        .collect();
    for t in &ckpt.manifest.tensors {
        if !names.contains(&t.name) && !in_other_layout(&t.name, &t.shape, &names) {
            return Err(ckpt_error(
                ckpt,
                format!(
                    "holds tensor {}, which this model has not (parameters and two moments of {} tensors)",
                    t.name,
                    params.len()
                ),
            ));
        }
    }
    for group in GROUPS {
        for slot in params {
            let name = format!("{group}/{}", slot.name);
            let shape = ckpt.shape(&name)?;
            if shape != slot.shape {
                return Err(ckpt_error(
                    ckpt,
                    format!(
                        "tensor {name} has shape {shape:?}, this model's is {:?}",
                        slot.shape
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

/// Whether stored tensor `name` of shape `shape` is one of `names` in the
/// other layout: a layer's tensor of a stacked one, or a stacked one of as
/// many layers' as `names` has.
fn in_other_layout(
    name: &str,
    shape: &[usize],
    names: &std::collections::BTreeSet<String>,
) -> bool {
    let (group, param) = name.split_once('/').unwrap_or(("", name));
    match gemma::stacked_name(param) {
        Some((stacked, _)) => names.contains(&format!("{group}/{stacked}")),
        None => {
            let (Some(t), Some(&layers)) = (param.strip_prefix("model.layers.*."), shape.first())
            else {
                return false;
            };
            let layer = |i: usize| names.contains(&format!("{group}/model.layers.{i}.{t}"));
            layers > 0 && layer(layers - 1) && !layer(layers)
        }
    }
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
/// loader states of the rows it loads. Waits for the copies.
pub(crate) fn snapshot(
    cfg: &TrainConfig,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
    state: &PerPartition<DeviceState>,
    host: usize,
    loader_rows: Vec<(usize, data::LoaderState)>,
) -> Result<Snapshot> {
    let (mut snap, sources) = layout(cfg, plan, at, params, host, loader_rows);
    let (counter_part, counter_index) = counter_source(at, params, host);
    snap.step = local(state, counter_part)[counter_index].to_host::<i32>()?[0] as u64;
    let mut sources = sources.into_iter();
    for piece in snap.tensors.iter_mut().flat_map(|t| t.pieces.iter_mut()) {
        // invariant: `layout` names one source per piece, in piece order.
        let (p, i) = sources.next().expect("a source per piece");
        piece.data = local(state, p)[i].to_host::<f32>()?;
    }
    Ok(snap)
}

/// Host `host`'s part of the state, copied on the devices (`train.checkpoint_copy = "device"`): each box it writes and the
/// step counter get a buffer of their own, so the next step may donate
/// (overwrite) the state at once while [`DeviceSnapshot::into_snapshot`] reads
/// the copies on another thread. Returns without waiting: the runtime
/// orders the copies after the step that computes the state and before
/// the step that donates it.
pub(crate) fn snapshot_on_device(
    cfg: &TrainConfig,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
    state: &PerPartition<DeviceState>,
    host: usize,
    loader_rows: Vec<(usize, data::LoaderState)>,
) -> Result<DeviceSnapshot> {
    let (skeleton, sources) = layout(cfg, plan, at, params, host, loader_rows);
    let (counter_part, counter_index) = counter_source(at, params, host);
    let counter = local(state, counter_part)[counter_index].copy_on_device()?;
    let copies = sources
        .into_iter()
        .map(|(p, i)| local(state, p)[i].copy_on_device())
        .collect::<pjrt::Result<Vec<_>>>()?;
    Ok(DeviceSnapshot {
        skeleton,
        counter,
        copies,
    })
}

/// A host's checkpoint part still on the devices: copies of its boxes,
/// read to the host (and freed) by [`DeviceSnapshot::into_snapshot`].
pub(crate) struct DeviceSnapshot {
    /// The snapshot with every piece's data still empty.
    skeleton: Snapshot,
    /// A copy of the step counter, to check the step.
    counter: Buffer,
    /// A copy of each piece's box, in piece order.
    copies: Vec<Buffer>,
}

impl DeviceSnapshot {
    /// Waits for the copies, reads them to the host and frees them: the
    /// snapshot after `step` steps (the copied step counter must say so).
    pub(crate) fn into_snapshot(self, step: u64) -> Result<Snapshot> {
        let mut snap = self.skeleton;
        let counter = self.counter.to_host::<i32>()?[0] as u64;
        if counter != step {
            return Err(Error::Checkpoint {
                path: Default::default(),
                message: format!(
                    "the device copy of the state after step {step} holds step counter {counter}"
                ),
            });
        }
        snap.step = step;
        let pieces = snap.tensors.iter_mut().flat_map(|t| t.pieces.iter_mut());
        for (piece, copy) in pieces.zip(self.copies) {
            piece.data = copy.to_host::<f32>()?;
        }
        Ok(snap)
    }
}

/// Partition `p`'s state.
fn local(state: &PerPartition<DeviceState>, p: usize) -> &DeviceState {
    // invariant: state is built for local partitions only, and a host
    // snapshots only its own partitions.
    state[p].as_ref().expect("local")
}

/// Where host `host` reads the step counter: `(partition, buffer index)`.
fn counter_source(at: &Placement, params: &[Slot], host: usize) -> (usize, usize) {
    // invariant: every host holds at least one partition.
    let (first, _) = at.parts_of(host).next().expect("a host holds partitions");
    (first, GROUPS.len() * params.len())
}

/// Host `host`'s snapshot with empty piece data and step 0, and where each
/// piece's data is, in piece order: `(partition, buffer index)`.
fn layout(
    cfg: &TrainConfig,
    plan: &Plan,
    at: &Placement,
    params: &[Slot],
    host: usize,
    loader_rows: Vec<(usize, data::LoaderState)>,
) -> (Snapshot, Vec<(usize, usize)>) {
    let p_count = params.len();
    let parts: Vec<(usize, usize)> = at.parts_of(host).collect();
    let mut tensors = Vec::with_capacity(GROUPS.len() * p_count);
    let mut sources = Vec::new();
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
                    data: Vec::new(),
                });
                sources.push((p, group * p_count + i));
            }
            tensors.push(SnapshotTensor {
                name: format!("{prefix}/{}", slot.name),
                shape: slot.shape.clone(),
                pieces,
            });
        }
    }
    let snap = Snapshot {
        step: 0,
        mesh: MeshRecord {
            data: plan.mesh.data,
            fsdp: plan.mesh.fsdp,
            tensor: plan.mesh.tensor,
        },
        loader_rows,
        seed: cfg.model.seed,
        config_toml: cfg.to_toml(),
        tensors,
    };
    (snap, sources)
}

/// The parameters as host arrays, in [`gemma::param_specs`] order whatever
/// their layout (every partition local).
pub(crate) fn gather_params(
    model: &gemma::GemmaConfig,
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
    let stored = params
        .iter()
        .enumerate()
        .map(|(i, slot)| get(plan, slot, &local.iter().map(|s| &s[i]).collect::<Vec<_>>()))
        .collect::<Result<Vec<_>>>()?;
    Ok(gemma::from_layout(model, plan.layout(), stored)?)
}

#[cfg(test)]
mod tests {
    use super::in_other_layout;

    #[test]
    fn a_stored_tensor_matches_the_model_in_the_other_layout_only_at_its_depth() {
        let names = |layers: usize| -> std::collections::BTreeSet<String> {
            (0..layers)
                .map(|i| format!("m/model.layers.{i}.mlp.up_proj.weight"))
                .collect()
        };
        let stacked = "m/model.layers.*.mlp.up_proj.weight";
        assert!(in_other_layout(stacked, &[2, 64, 32], &names(2)));
        assert!(!in_other_layout(stacked, &[3, 64, 32], &names(2)));
        assert!(!in_other_layout(stacked, &[1, 64, 32], &names(2)));
        assert!(!in_other_layout(
            "v/model.layers.*.mlp.up_proj.weight",
            &[2],
            &names(2)
        ));
        let per_layer = "m/model.layers.1.mlp.up_proj.weight";
        let model: std::collections::BTreeSet<String> = [stacked.to_string()].into();
        assert!(in_other_layout(per_layer, &[64, 32], &model));
        assert!(!in_other_layout("m/model.norm.weight", &[32], &model));
    }
}
