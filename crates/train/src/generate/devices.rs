//! The devices a generation or evaluation runs on: the client, the mesh and
//! its sharding plan (the training rules), the placement of partitions on
//! devices, and compiling programs for them.

use hlo::DType;
use pjrt::{Buffer, Client};

use crate::config::{MeshSection, RuntimeConfig};
use crate::device::{Placement, put};
use crate::exec::Exe;
use crate::host::JobLayout;
use crate::step::{Plan, Slot};
use crate::{Error, Result};

/// A client, a mesh over its devices and where each partition lives.
pub struct Devices {
    /// The PJRT client.
    pub client: Client,
    /// Mesh and logical-axis rules (the same as training's).
    pub plan: Plan,
    pub(crate) at: Placement,
    order: Vec<i64>,
    xla: Vec<(String, pjrt::XlaOption)>,
    /// The plugin runs the decode kernels (see [`super::kernels`]).
    kernels: bool,
}

impl Devices {
    /// Creates the client `runtime` asks for and lays `mesh` over it for
    /// `model` (`dtype`: the compute dtype, which picks XLA's defaults).
    pub fn new(
        model: &gemma::GemmaConfig,
        runtime: &RuntimeConfig,
        mesh: &MeshSection,
        dtype: DType,
    ) -> Result<Devices> {
        let backend = pjrt::install::Backend::parse(&runtime.backend)?;
        let path = pjrt::install::resolve(backend, runtime.plugin.as_deref())?;
        let plugin = pjrt::Plugin::load(path)?;
        let mut options = Vec::new();
        if backend == pjrt::install::Backend::Cpu {
            options.push((
                "cpu_device_count",
                pjrt::OptionValue::Int(runtime.device_count.max(1) as i64),
            ));
        }
        let client = Client::new(&plugin, &options)?;
        Self::with_client(client, model, runtime, mesh, dtype)
    }

    /// Lays `mesh` over an existing client's first `runtime.device_count` devices.
    pub fn with_client(
        client: Client,
        model: &gemma::GemmaConfig,
        runtime: &RuntimeConfig,
        mesh: &MeshSection,
        dtype: DType,
    ) -> Result<Devices> {
        // Unset (0): one device, as training on the CPU plugin.
        let n = runtime.device_count.max(1);
        if n == 0 || client.devices().len() < n {
            return Err(Error::config(
                "runtime",
                "runtime.device_count",
                format!(
                    "{n} devices asked, the {} plugin has {}",
                    client.platform_name(),
                    client.devices().len()
                ),
            ));
        }
        let m = mesh::MeshConfig {
            data: mesh.data,
            fsdp: mesh.fsdp,
            tensor: mesh.tensor,
        }
        .resolve(n as i64)?;
        m.check_divides("model.heads", model.heads as i64, &["tensor"])?;
        let plan = Plan::new(model, m, mesh::Rules::with_overrides(&mesh.rules)?);
        let along = if mesh.tensor_along == "y" {
            mesh::TorusAxis::Y
        } else {
            mesh::TorusAxis::X
        };
        // One process holding every device of the mesh.
        let layout = JobLayout::new(&plan, &client.global_devices()[..n], along, |_| 0)?;
        let order = layout.order.clone();
        let at = Placement::one_host(layout, &client)?;
        let xla = runtime.xla_options(dtype)?;
        let kernels = n == 1
            && client.platform_name() == "cpu"
            && std::env::var(super::kernels::ENV).as_deref() != Ok("0")
            && super::kernels::register(client.plugin())?;
        Ok(Devices {
            client,
            plan,
            at,
            order,
            xla,
            kernels,
        })
    }

    /// Number of partitions (devices of the mesh).
    pub fn partitions(&self) -> usize {
        self.at.device_of.len()
    }

    /// Compiles a program for the mesh.
    pub(crate) fn compile(&self, program: &hlo::Program) -> Result<Exe> {
        let n = self.plan.mesh.devices();
        let mut options = if n > 1 {
            pjrt::CompileOptions {
                device_assignment: Some(vec![self.order.clone()]),
                ..pjrt::CompileOptions::spmd(n)
            }
        } else {
            pjrt::CompileOptions::single()
        };
        options.xla_options = self.xla.clone();
        let exe = self.client.compile(&program.to_mlir(), &options)?;
        let partition_of = exe
            .device_ids()?
            .iter()
            .map(|id| {
                self.order
                    .iter()
                    .position(|o| *o == *id as i64)
                    // invariant: the executable was compiled for this device assignment.
                    .expect("executable devices are the assigned ones")
            })
            .collect();
        Ok(Exe { exe, partition_of })
    }

    /// A host array split into one buffer per partition, as `slot` says.
    pub(crate) fn put<T: pjrt::NativeType>(&self, slot: &Slot, data: &[T]) -> Result<Vec<Buffer>> {
        let shards = put(&self.client, &self.plan, &self.at, slot, data)?;
        Ok(shards
            .into_iter()
            // invariant: a generator's process holds every partition.
            .map(|b| b.expect("every partition is local"))
            .collect())
    }

    /// A scalar on every partition.
    pub(crate) fn scalar<T: pjrt::NativeType>(&self, value: T) -> Result<Vec<Buffer>> {
        self.at
            .device_of
            .iter()
            .map(|d| {
                // invariant: a generator's process holds every partition.
                let d = d.expect("every partition is local");
                Ok(self.client.buffer_from_host(&[value], &[], d)?)
            })
            .collect()
    }

    /// The slot of a batch-major array (`[B, ...]`): the batch over the
    /// rules' `batch` axes, the other dimensions as named.
    pub(crate) fn slot(&self, name: &str, dtype: DType, dims: &[(&str, usize)]) -> Slot {
        let named: Vec<(&str, i64)> = dims.iter().map(|(a, n)| (*a, *n as i64)).collect();
        Slot {
            name: name.into(),
            shape: dims.iter().map(|d| d.1).collect(),
            dtype,
            axes: self.plan.rules.shard(&self.plan.mesh, &named),
        }
    }

    /// The parameter slots of `model` stored in `dtype`.
    pub(crate) fn param_slots(&self, model: &gemma::GemmaConfig, dtype: DType) -> Vec<Slot> {
        gemma::param_specs(model)
            .iter()
            .map(|s| Slot {
                name: s.name.clone(),
                shape: s.shape.clone(),
                dtype,
                axes: self.plan.param_axes(s),
            })
            .collect()
    }

    /// The custom-call target of the decode step's weight matmuls in
    /// `compute` (weights stored in it), when they run as custom calls:
    /// the CPU plugin, one device, a CPU with the kernel's fast path, not
    /// turned off by `MESHTRAIN_DECODE_KERNELS` (see [`super::kernels`]).
    pub fn decode_kernel(&self, compute: DType) -> Option<&'static str> {
        if self.kernels {
            super::kernels::target(compute)
        } else {
            None
        }
    }

    /// Runs the decode step's matmuls as XLA dots from now on (programs
    /// built later; the `MESHTRAIN_DECODE_KERNELS=0` of one generator).
    pub fn disable_decode_kernels(&mut self) {
        self.kernels = false;
    }

    /// How weights computed in `compute` are stored for XLA's matmuls: as it, except bf16 on
    /// the CPU plugin, stored as f32 holding bf16 values (see
    /// [`gemma::Matmuls`]): XLA's CPU backend widens
    /// bf16 weights to f32 for every matmul, on every call.
    pub fn weight_dtype(&self, compute: DType) -> DType {
        if compute == DType::BF16 && self.client.platform_name() == "cpu" {
            DType::F32
        } else {
            compute
        }
    }

    /// Host parameters (f32, [`gemma::param_specs`] order) onto the
    /// devices for computing in `compute` (`F32` or `BF16`), stored in
    /// `stored` (`compute`, or f32 holding bf16 values): per partition, in
    /// slot order.
    pub fn upload_params(
        &self,
        model: &gemma::GemmaConfig,
        params: &[gemma::hf::HostTensor],
        compute: DType,
        stored: DType,
    ) -> Result<Vec<Vec<Buffer>>> {
        let slots = self.param_slots(model, stored);
        let mut out: Vec<Vec<Buffer>> = (0..self.partitions()).map(|_| Vec::new()).collect();
        for (slot, t) in slots.iter().zip(params) {
            let bf16 = t.data.iter().map(|&x| pjrt::bf16::from_f32(x));
            let bufs = match (compute, stored) {
                (DType::BF16, DType::BF16) => self.put(slot, &bf16.collect::<Vec<_>>())?,
                (DType::BF16, _) => self.put(slot, &bf16.map(f32::from).collect::<Vec<_>>())?,
                _ => self.put(slot, &t.data)?,
            };
            for (p, b) in bufs.into_iter().enumerate() {
                out[p].push(b);
            }
        }
        Ok(out)
    }
}
