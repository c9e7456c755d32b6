//! A PJRT client: the devices of one process and what runs on them.

use std::sync::Arc;

use crate::buffer::{Buffer, ElementType, NativeType};
use crate::compile::CompileOptions;
use crate::executable::LoadedExecutable;
use crate::options::{self, OptionValue};
use crate::plugin::{Plugin, args, pjrt_call, string_from};
use crate::sys;
use crate::{Error, Result};

/// One device a client can address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Global device id.
    pub id: i32,
    /// Device kind as the plugin names it (`cpu`, `TPU v5 lite`, ...).
    pub kind: String,
    /// Index of the process that owns the device.
    pub process_index: i32,
}

/// A PJRT client. Cheap to clone; destroyed when the last clone, buffer and
/// executable made from it are dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) plugin: Arc<Plugin>,
    pub(crate) raw: *mut sys::PJRT_Client,
    pub(crate) devices: Vec<*mut sys::PJRT_Device>,
    infos: Vec<DeviceInfo>,
    /// Every device of the job (all processes), with attributes.
    global: Vec<crate::TopologyDevice>,
    process_index: i32,
    platform: String,
    /// The key-value store the plugin's callbacks use; outlives the client.
    _kv: Option<crate::kv::StoreBox>,
}

// SAFETY: PJRT clients are thread-safe; the device pointers are owned by it.
unsafe impl Send for ClientInner {}
// SAFETY: as above.
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Client_Destroy_Args { client: self.raw });
        let _ = pjrt_call!(&self.plugin, PJRT_Client_Destroy, &mut a);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("platform", &self.inner.platform)
            .field("devices", &self.inner.infos.len())
            .finish()
    }
}

impl Client {
    /// Creates a client with named options, e.g. `[("cpu_device_count", 8.into())]`.
    /// Option types are checked first (see [`OptionValue`]).
    pub fn new(plugin: &Arc<Plugin>, options: &[(&str, OptionValue)]) -> Result<Client> {
        Self::create(plugin, options, None)
    }

    /// A client of a multi-process job: the plugin's distributed runtime
    /// exchanges its topology through `store` (with options such as
    /// `node_id` and `num_nodes`, as the CUDA plugin takes them). The CPU
    /// plugins ignore the store.
    pub fn with_key_value_store(
        plugin: &Arc<Plugin>,
        options: &[(&str, OptionValue)],
        store: Arc<dyn crate::KeyValueStore>,
    ) -> Result<Client> {
        Self::create(plugin, options, Some(Box::new(store)))
    }

    fn create(
        plugin: &Arc<Plugin>,
        options: &[(&str, OptionValue)],
        kv: Option<crate::kv::StoreBox>,
    ) -> Result<Client> {
        let owned: Vec<(String, OptionValue)> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        options::validate(&owned)?;
        let raw_opts = options::to_raw(&owned);
        let mut a = args!(PJRT_Client_Create_Args {
            create_options: raw_opts.as_ptr(),
            num_options: raw_opts.len(),
        });
        if let Some(store) = &kv {
            crate::kv::install(&mut a, store);
        }
        pjrt_call!(plugin, PJRT_Client_Create, &mut a).map_err(|e| match e {
            // A CUDA plugin without a driver fails here: say so plainly.
            Error::Pjrt {
                call,
                code,
                message,
            } => match crate::install::cuda::plugin_major(plugin.path())
                .and_then(crate::install::cuda::driver_problem)
            {
                Some(why) => Error::Pjrt {
                    call,
                    code,
                    message: format!("{message}\n{why}"),
                },
                None => Error::Pjrt {
                    call,
                    code,
                    message,
                },
            },
            other => other,
        })?;
        let mut inner = ClientInner {
            plugin: plugin.clone(),
            raw: a.client,
            devices: Vec::new(),
            infos: Vec::new(),
            global: Vec::new(),
            process_index: 0,
            platform: String::new(),
            _kv: kv,
        };
        let mut p = args!(PJRT_Client_PlatformName_Args { client: inner.raw });
        pjrt_call!(plugin, PJRT_Client_PlatformName, &mut p)?;
        inner.platform = string_from(p.platform_name, p.platform_name_size);
        let mut d = args!(PJRT_Client_AddressableDevices_Args { client: inner.raw });
        pjrt_call!(plugin, PJRT_Client_AddressableDevices, &mut d)?;
        inner.devices = raw_list(d.addressable_devices, d.num_addressable_devices);
        inner.infos = inner
            .devices
            .iter()
            .map(|&dev| device_info(plugin, dev))
            .collect::<Result<_>>()?;
        let mut g = args!(PJRT_Client_Devices_Args { client: inner.raw });
        pjrt_call!(plugin, PJRT_Client_Devices, &mut g)?;
        inner.global = raw_list(g.devices, g.num_devices)
            .into_iter()
            .map(|dev| {
                let mut d = args!(PJRT_Device_GetDescription_Args { device: dev });
                pjrt_call!(plugin, PJRT_Device_GetDescription, &mut d)?;
                Ok(crate::TopologyDevice {
                    info: description_info(plugin, d.device_description)?,
                    attributes: description_attributes(plugin, d.device_description)?,
                })
            })
            .collect::<Result<_>>()?;
        let mut pi = args!(PJRT_Client_ProcessIndex_Args { client: inner.raw });
        pjrt_call!(plugin, PJRT_Client_ProcessIndex, &mut pi)?;
        inner.process_index = pi.process_index;
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The plugin this client runs on.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// Platform name: `cpu`, `cuda`, `tpu`.
    pub fn platform_name(&self) -> &str {
        &self.inner.platform
    }

    /// The devices this process can address, in the plugin's order. Buffers
    /// and executions name devices by their index in this list.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.inner.infos
    }

    /// Every device of the job, this process's and the others' (on a
    /// multi-process TPU or GPU client), with the attributes the plugin
    /// reports (`coords`, `slice_index`, ...). A single-process client's
    /// global devices are its addressable ones.
    pub fn global_devices(&self) -> &[crate::TopologyDevice] {
        &self.inner.global
    }

    /// The index of this process in a multi-process client (0 otherwise).
    pub fn process_index(&self) -> i32 {
        self.inner.process_index
    }

    /// Copies host data to a new buffer on device `device` (an index into
    /// [`Client::devices`]). `data.len()` must equal the product of `dims`.
    pub fn buffer_from_host<T: NativeType>(
        &self,
        data: &[T],
        dims: &[i64],
        device: usize,
    ) -> Result<Buffer> {
        self.buffer_from_bytes(T::TYPE, T::as_bytes(data), dims, device)
    }

    /// Copies raw little-endian bytes of element type `ty` to device `device`.
    pub fn buffer_from_bytes(
        &self,
        ty: ElementType,
        bytes: &[u8],
        dims: &[i64],
        device: usize,
    ) -> Result<Buffer> {
        let what = "host-to-device transfer";
        if dims.iter().any(|&d| d < 0) {
            return Err(Error::invalid(
                what,
                format!("negative dimension in {dims:?}"),
            ));
        }
        let want = dims.iter().product::<i64>() as usize * ty.size_in_bytes();
        if bytes.len() != want {
            return Err(Error::invalid(
                what,
                format!(
                    "{} bytes given for a {ty:?} array of shape {dims:?}, which needs {want}",
                    bytes.len()
                ),
            ));
        }
        let dev = self.device_ptr(device, what)?;
        let mut a = args!(PJRT_Client_BufferFromHostBuffer_Args {
            client: self.inner.raw,
            data: bytes.as_ptr().cast(),
            type_: ty.to_raw(),
            dims: dims.as_ptr(),
            num_dims: dims.len(),
            host_buffer_semantics:
                sys::PJRT_HostBufferSemantics::PJRT_HostBufferSemantics_kImmutableOnlyDuringCall,
            device: dev,
        });
        pjrt_call!(&self.inner.plugin, PJRT_Client_BufferFromHostBuffer, &mut a)?;
        let buffer = Buffer::wrap(self.inner.clone(), a.buffer);
        self.inner
            .plugin
            .await_event(a.done_with_host_buffer, "PJRT_Client_BufferFromHostBuffer")?;
        Ok(buffer)
    }

    /// Compiles a StableHLO module (MLIR text) for this client's devices.
    pub fn compile(&self, mlir: &str, options: &CompileOptions) -> Result<LoadedExecutable> {
        // A multi-process program is assigned over the job's global devices.
        let ids: Vec<i64> = self.inner.global.iter().map(|d| d.info.id as i64).collect();
        options.validate(Some(&ids))?;
        let proto = options.encode();
        let program = crate::compile::mlir_program(mlir);
        let mut a = args!(PJRT_Client_Compile_Args {
            client: self.inner.raw,
            program: &program,
            compile_options: proto.as_ptr().cast(),
            compile_options_size: proto.len(),
        });
        pjrt_call!(&self.inner.plugin, PJRT_Client_Compile, &mut a)?;
        LoadedExecutable::wrap(self.inner.clone(), a.executable)
    }

    pub(crate) fn device_ptr(
        &self,
        device: usize,
        what: &'static str,
    ) -> Result<*mut sys::PJRT_Device> {
        self.inner.devices.get(device).copied().ok_or_else(|| {
            Error::invalid(
                what,
                format!(
                    "device index {device} out of range: the client has {} devices",
                    self.inner.devices.len()
                ),
            )
        })
    }
}

pub(crate) fn raw_list<T>(ptr: *const *mut T, n: usize) -> Vec<*mut T> {
    if ptr.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: the plugin hands out `n` pointers at `ptr`.
    unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec()
}

fn device_info(plugin: &Plugin, dev: *mut sys::PJRT_Device) -> Result<DeviceInfo> {
    let mut g = args!(PJRT_Device_GetDescription_Args { device: dev });
    pjrt_call!(plugin, PJRT_Device_GetDescription, &mut g)?;
    description_info(plugin, g.device_description)
}

pub(crate) fn description_info(
    plugin: &Plugin,
    desc: *mut sys::PJRT_DeviceDescription,
) -> Result<DeviceInfo> {
    let mut id = args!(PJRT_DeviceDescription_Id_Args {
        device_description: desc
    });
    pjrt_call!(plugin, PJRT_DeviceDescription_Id, &mut id)?;
    let mut pi = args!(PJRT_DeviceDescription_ProcessIndex_Args {
        device_description: desc
    });
    pjrt_call!(plugin, PJRT_DeviceDescription_ProcessIndex, &mut pi)?;
    let mut k = args!(PJRT_DeviceDescription_Kind_Args {
        device_description: desc
    });
    pjrt_call!(plugin, PJRT_DeviceDescription_Kind, &mut k)?;
    Ok(DeviceInfo {
        id: id.id,
        kind: string_from(k.device_kind, k.device_kind_size),
        process_index: pi.process_index,
    })
}

pub(crate) fn description_attributes(
    plugin: &Plugin,
    desc: *mut sys::PJRT_DeviceDescription,
) -> Result<Vec<(String, OptionValue)>> {
    let mut a = args!(PJRT_DeviceDescription_Attributes_Args {
        device_description: desc
    });
    pjrt_call!(plugin, PJRT_DeviceDescription_Attributes, &mut a)?;
    Ok(options::from_raw(a.attributes, a.num_attributes))
}
