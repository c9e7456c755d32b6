//! Devices: the client a config asks for, where each partition of the mesh
//! lives, host arrays to per-device shards and back.

use pjrt::{Buffer, Client};

use crate::config::TrainConfig;
use crate::shard::{extract, insert, shard_ranges};
use crate::step::{Plan, Slot};
use crate::{Error, Result};

/// Creates the client the config asks for.
pub fn make_client(cfg: &TrainConfig) -> Result<Client> {
    let backend = pjrt::install::Backend::parse(&cfg.runtime.backend)?;
    let path = pjrt::install::resolve(backend, cfg.runtime.plugin.as_deref())?;
    let plugin = pjrt::Plugin::load(path)?;
    let mut options = Vec::new();
    if backend == pjrt::install::Backend::Cpu {
        options.push((
            "cpu_device_count",
            pjrt::OptionValue::Int(cfg.runtime.device_count as i64),
        ));
    }
    let client = Client::new(&plugin, &options)?;
    if client.devices().len() < cfg.runtime.device_count {
        return Err(Error::config(
            "runtime",
            "runtime.device_count",
            format!(
                "{} devices asked, the {} plugin has {}",
                cfg.runtime.device_count,
                client.platform_name(),
                client.devices().len()
            ),
        ));
    }
    Ok(client)
}

/// Which client device holds each partition.
pub(crate) struct Placement {
    /// Client device index of partition `p`.
    pub device_of: Vec<usize>,
}

impl Placement {
    /// Orders the client's devices along the torus (`mesh.tensor_along`);
    /// returns the placement and the device ids in partition order.
    pub(crate) fn new(
        cfg: &TrainConfig,
        client: &Client,
        plan: &Plan,
    ) -> Result<(Placement, Vec<i64>)> {
        let n = plan.mesh.devices() as usize;
        let devices: Vec<mesh::Device> = client.devices()[..n]
            .iter()
            .map(|d| mesh::Device {
                id: d.id as i64,
                coords: vec![],
                slice: 0,
            })
            .collect();
        let ids = mesh::device_order(&plan.mesh, &devices, cfg.tensor_along())?;
        let device_of = ids
            .iter()
            .map(|id| {
                client
                    .devices()
                    .iter()
                    .position(|d| d.id as i64 == *id)
                    .expect("ids come from the client")
            })
            .collect();
        Ok((Placement { device_of }, ids))
    }
}

/// Splits a host array into one buffer per partition, each on its device.
pub(crate) fn put<T: pjrt::NativeType>(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    slot: &Slot,
    data: &[T],
) -> Result<Vec<Buffer>> {
    at.device_of
        .iter()
        .enumerate()
        .map(|(p, &device)| {
            let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
            let dims: Vec<i64> = r.iter().map(|x| x.len() as i64).collect();
            Ok(client.buffer_from_host(&extract(data, &slot.shape, &r), &dims, device)?)
        })
        .collect()
}

/// Gathers one buffer per device back into a host array.
pub(crate) fn get(plan: &Plan, slot: &Slot, shards: &[&Buffer]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; slot.shape.iter().product()];
    get_into(plan, slot, shards, &mut out)?;
    Ok(out)
}

/// Gathers one buffer per device into `out` (the slot's size).
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
                .expect("executable devices are the assigned ones")
        })
        .collect();
    Ok((exe, partition_of))
}
