//! Deviceless compilation: a topology description (e.g. a TPU `v5e:16x16`
//! slice) and `PJRT_Compile` against it, with no client and no hardware.

use std::sync::Arc;

use crate::Result;
use crate::client::{DeviceInfo, description_attributes, description_info, raw_list};
use crate::compile::CompileOptions;
use crate::executable::Executable;
use crate::options::{self, OptionValue};
use crate::plugin::{Plugin, args, pjrt_call, string_from};
use crate::sys;

/// One device of a topology, with its attributes (e.g. `coords`).
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyDevice {
    /// Id, kind and owning process.
    pub info: DeviceInfo,
    /// Attributes the plugin reports (`coords`, `core_on_chip`, ...).
    pub attributes: Vec<(String, OptionValue)>,
}

impl TopologyDevice {
    /// An integer-list attribute, e.g. `coords`.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attributes.iter().find_map(|(n, v)| match v {
            OptionValue::Ints(v) if n == name => Some(v.as_slice()),
            _ => None,
        })
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attributes.iter().find_map(|(n, v)| match v {
            OptionValue::Int(v) if n == name => Some(*v),
            _ => None,
        })
    }
}

/// A description of devices that need not exist on this machine.
pub struct Topology {
    plugin: Arc<Plugin>,
    raw: *mut sys::PJRT_TopologyDescription,
}

// SAFETY: topology descriptions are immutable, thread-safe handles.
unsafe impl Send for Topology {}
// SAFETY: as above.
unsafe impl Sync for Topology {}

impl Drop for Topology {
    fn drop(&mut self) {
        let mut a = args!(PJRT_TopologyDescription_Destroy_Args { topology: self.raw });
        let _ = pjrt_call!(&self.plugin, PJRT_TopologyDescription_Destroy, &mut a);
    }
}

impl Topology {
    /// Creates a topology by name (`v5e:16x16`) with named options.
    pub fn new(
        plugin: &Arc<Plugin>,
        name: &str,
        options: &[(&str, OptionValue)],
    ) -> Result<Topology> {
        let owned: Vec<(String, OptionValue)> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        options::validate(&owned)?;
        let raw_opts = options::to_raw(&owned);
        let mut a = args!(PJRT_TopologyDescription_Create_Args {
            topology_name: name.as_ptr().cast(),
            topology_name_size: name.len(),
            create_options: raw_opts.as_ptr(),
            num_options: raw_opts.len(),
        });
        pjrt_call!(plugin, PJRT_TopologyDescription_Create, &mut a)?;
        Ok(Topology {
            plugin: plugin.clone(),
            raw: a.topology,
        })
    }

    /// Platform name (`tpu`).
    pub fn platform_name(&self) -> Result<String> {
        let mut a = args!(PJRT_TopologyDescription_PlatformName_Args { topology: self.raw });
        pjrt_call!(&self.plugin, PJRT_TopologyDescription_PlatformName, &mut a)?;
        Ok(string_from(a.platform_name, a.platform_name_size))
    }

    /// All devices of the topology with their attributes.
    pub fn devices(&self) -> Result<Vec<TopologyDevice>> {
        let mut a =
            args!(PJRT_TopologyDescription_GetDeviceDescriptions_Args { topology: self.raw });
        pjrt_call!(
            &self.plugin,
            PJRT_TopologyDescription_GetDeviceDescriptions,
            &mut a
        )?;
        raw_list(a.descriptions, a.num_descriptions)
            .into_iter()
            .map(|d| {
                Ok(TopologyDevice {
                    info: description_info(&self.plugin, d)?,
                    attributes: description_attributes(&self.plugin, d)?,
                })
            })
            .collect()
    }

    /// Compiles a StableHLO module for this topology without a client.
    pub fn compile(&self, mlir: &str, options: &CompileOptions) -> Result<Executable> {
        options.validate(None)?;
        let proto = options.encode();
        let program = crate::compile::mlir_program(mlir);
        let mut a = args!(PJRT_Compile_Args {
            topology: self.raw,
            program: &program,
            compile_options: proto.as_ptr().cast(),
            compile_options_size: proto.len(),
        });
        pjrt_call!(&self.plugin, PJRT_Compile, &mut a)?;
        Ok(Executable::wrap(self.plugin.clone(), a.executable))
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("platform", &self.platform_name().ok())
            .finish()
    }
}
