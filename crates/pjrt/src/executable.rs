//! Compiled programs: the device-independent [`Executable`] (memory stats,
//! optimized HLO) and the [`LoadedExecutable`] that runs on a client.

use std::sync::Arc;

use crate::buffer::Buffer;
use crate::client::{ClientInner, raw_list};
use crate::hlo::{HloShape, HloSummary, parse_module};
use crate::plugin::{Plugin, args, pjrt_call, string_from};
use crate::sys;
use crate::{Error, Result};

/// Per-device memory a compiled program needs, from the compiler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Generated code.
    pub generated_code_bytes: i64,
    /// Arguments.
    pub argument_bytes: i64,
    /// Outputs.
    pub output_bytes: i64,
    /// Outputs that reuse (donated) argument memory.
    pub alias_bytes: i64,
    /// Temporaries.
    pub temp_bytes: i64,
    /// Peak device memory; budget on this, not on temp.
    pub peak_bytes: i64,
}

/// A compiled program, not bound to a client (from [`crate::Topology::compile`]
/// or [`LoadedExecutable::executable`]).
pub struct Executable {
    plugin: Arc<Plugin>,
    raw: *mut sys::PJRT_Executable,
}

// SAFETY: PJRT executables are immutable, thread-safe handles.
unsafe impl Send for Executable {}
// SAFETY: as above.
unsafe impl Sync for Executable {}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Executable_Destroy_Args {
            executable: self.raw
        });
        let _ = pjrt_call!(&self.plugin, PJRT_Executable_Destroy, &mut a);
    }
}

impl Executable {
    pub(crate) fn wrap(plugin: Arc<Plugin>, raw: *mut sys::PJRT_Executable) -> Executable {
        Executable { plugin, raw }
    }

    /// The program's name.
    pub fn name(&self) -> Result<String> {
        let mut a = args!(PJRT_Executable_Name_Args {
            executable: self.raw
        });
        pjrt_call!(&self.plugin, PJRT_Executable_Name, &mut a)?;
        Ok(string_from(a.executable_name, a.executable_name_size))
    }

    /// Number of outputs per device.
    pub fn num_outputs(&self) -> Result<usize> {
        let mut a = args!(PJRT_Executable_NumOutputs_Args {
            executable: self.raw
        });
        pjrt_call!(&self.plugin, PJRT_Executable_NumOutputs, &mut a)?;
        Ok(a.num_outputs)
    }

    /// Number of partitions.
    pub fn num_partitions(&self) -> Result<usize> {
        let mut a = args!(PJRT_Executable_NumPartitions_Args {
            executable: self.raw
        });
        pjrt_call!(&self.plugin, PJRT_Executable_NumPartitions, &mut a)?;
        Ok(a.num_partitions)
    }

    /// Number of replicas.
    pub fn num_replicas(&self) -> Result<usize> {
        let mut a = args!(PJRT_Executable_NumReplicas_Args {
            executable: self.raw
        });
        pjrt_call!(&self.plugin, PJRT_Executable_NumReplicas, &mut a)?;
        Ok(a.num_replicas)
    }

    /// Per-device memory the compiler planned.
    pub fn memory_stats(&self) -> Result<MemoryStats> {
        let mut a = args!(PJRT_Executable_GetCompiledMemoryStats_Args {
            executable: self.raw
        });
        pjrt_call!(&self.plugin, PJRT_Executable_GetCompiledMemoryStats, &mut a)?;
        Ok(MemoryStats {
            generated_code_bytes: a.generated_code_size_in_bytes,
            argument_bytes: a.argument_size_in_bytes,
            output_bytes: a.output_size_in_bytes,
            alias_bytes: a.alias_size_in_bytes,
            temp_bytes: a.temp_size_in_bytes,
            peak_bytes: a.peak_memory_in_bytes,
        })
    }

    /// The optimized program as the plugin serializes it, with its format
    /// name (`hlo_with_config`: a serialized `xla.HloModuleProtoWithConfig`).
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>)> {
        let mut program = args!(PJRT_Program {});
        let mut a = args!(PJRT_Executable_OptimizedProgram_Args {
            executable: self.raw,
            program: &mut program,
        });
        pjrt_call!(&self.plugin, PJRT_Executable_OptimizedProgram, &mut a)?;
        let mut code = vec![0u8; program.code_size];
        program.code = code.as_mut_ptr().cast();
        let mut a = args!(PJRT_Executable_OptimizedProgram_Args {
            executable: self.raw,
            program: &mut program,
        });
        pjrt_call!(&self.plugin, PJRT_Executable_OptimizedProgram, &mut a)?;
        code.truncate(program.code_size);
        Ok((string_from(program.format, program.format_size), code))
    }

    /// The optimized module, parsed: per-device entry parameter shapes and
    /// every instruction's opcode and shape (to count collectives).
    pub fn optimized_hlo(&self) -> Result<HloSummary> {
        let (format, bytes) = self.optimized_program()?;
        match format.as_str() {
            "hlo_with_config" => parse_module(&bytes, true),
            "hlo" => parse_module(&bytes, false),
            other => Err(Error::invalid(
                "reading the optimized HLO",
                format!("unknown program format `{other}`"),
            )),
        }
    }
}

/// A program compiled for and loaded on a client's devices.
pub struct LoadedExecutable {
    client: Arc<ClientInner>,
    raw: *mut sys::PJRT_LoadedExecutable,
    executable: Executable,
    devices: Vec<*mut sys::PJRT_Device>,
    num_outputs: usize,
    /// Per-device parameter shapes, when the plugin's optimized HLO says.
    params: Option<Vec<HloShape>>,
}

// SAFETY: PJRT loaded executables are thread-safe handles.
unsafe impl Send for LoadedExecutable {}
// SAFETY: as above.
unsafe impl Sync for LoadedExecutable {}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let mut a = args!(PJRT_LoadedExecutable_Destroy_Args {
            executable: self.raw
        });
        let _ = pjrt_call!(&self.client.plugin, PJRT_LoadedExecutable_Destroy, &mut a);
    }
}

impl LoadedExecutable {
    pub(crate) fn wrap(
        client: Arc<ClientInner>,
        raw: *mut sys::PJRT_LoadedExecutable,
    ) -> Result<LoadedExecutable> {
        let plugin = client.plugin.clone();
        let mut g = args!(PJRT_LoadedExecutable_GetExecutable_Args {
            loaded_executable: raw
        });
        let got = pjrt_call!(&plugin, PJRT_LoadedExecutable_GetExecutable, &mut g);
        let mut d = args!(PJRT_LoadedExecutable_AddressableDevices_Args { executable: raw });
        let devs = pjrt_call!(&plugin, PJRT_LoadedExecutable_AddressableDevices, &mut d);
        // Wrap first so that `raw` is destroyed on every error path below.
        let mut loaded = LoadedExecutable {
            client,
            raw,
            executable: Executable::wrap(plugin, g.executable),
            devices: Vec::new(),
            num_outputs: 0,
            params: None,
        };
        got?;
        devs?;
        loaded.devices = raw_list(d.addressable_devices, d.num_addressable_devices);
        loaded.num_outputs = loaded.executable.num_outputs()?;
        // Plugins do not check argument types or shapes at execute (a wrong
        // one reads out of bounds), so remember them to check in Rust.
        loaded.params = loaded.executable.optimized_hlo().ok().map(|h| h.parameters);
        Ok(loaded)
    }

    /// The device-independent executable (memory stats, optimized HLO).
    pub fn executable(&self) -> &Executable {
        &self.executable
    }

    /// How many devices an execution spans (argument lists to pass).
    pub fn num_devices(&self) -> usize {
        self.devices.len()
    }

    /// Global ids of the devices an execution spans, in the order
    /// [`LoadedExecutable::execute`] takes argument lists.
    pub fn device_ids(&self) -> Result<Vec<i32>> {
        self.devices
            .iter()
            .map(|&d| {
                let mut g = args!(PJRT_Device_GetDescription_Args { device: d });
                pjrt_call!(&self.client.plugin, PJRT_Device_GetDescription, &mut g)?;
                Ok(crate::client::description_info(&self.client.plugin, g.device_description)?.id)
            })
            .collect()
    }

    /// Runs the program on all its devices and waits for it to finish.
    ///
    /// `args[d]` are the arguments for the executable's `d`-th device; the
    /// result is `[device][output]`. Arguments the program aliases to an
    /// output (`tf.aliasing_output`) are donated: afterwards they are deleted
    /// and reading them is an error.
    pub fn execute(&self, args: &[Vec<&Buffer>]) -> Result<Vec<Vec<Buffer>>> {
        let (outs, running) = self.execute_async(args)?;
        running.wait()?;
        Ok(outs)
    }

    /// Launches the program on all its devices and returns at once: the
    /// outputs are handles whose contents the devices are still computing
    /// (reading one waits for it, and a later program that takes one as an
    /// argument runs after it); [`Running::wait`] waits for the whole run
    /// and says whether it failed. Donation as in [`LoadedExecutable::execute`].
    pub fn execute_async(&self, args: &[Vec<&Buffer>]) -> Result<(Vec<Vec<Buffer>>, Running)> {
        if args.len() != self.devices.len() {
            return Err(Error::invalid(
                "execute",
                format!(
                    "{} argument lists given, the program runs on {} devices",
                    args.len(),
                    self.devices.len()
                ),
            ));
        }
        self.run(args, std::ptr::null_mut())
    }

    /// Runs a portable 1-device executable ([`crate::CompileOptions::portable`])
    /// on device `device` (an index into [`crate::Client::devices`]).
    pub fn execute_on(&self, args: &[&Buffer], device: usize) -> Result<Vec<Buffer>> {
        let dev = self.client.devices.get(device).copied().ok_or_else(|| {
            Error::invalid(
                "execute",
                format!(
                    "device index {device} out of range ({} devices)",
                    self.client.devices.len()
                ),
            )
        })?;
        let (mut out, running) = self.run(&[args.to_vec()], dev)?;
        running.wait()?;
        Ok(out.pop().unwrap_or_default())
    }

    fn check_args(&self, device: usize, list: &[&Buffer]) -> Result<()> {
        let Some(params) = &self.params else {
            return Ok(());
        };
        if params.len() != list.len() {
            return Err(Error::invalid(
                "execute",
                format!(
                    "the program takes {} arguments per device, {} given",
                    params.len(),
                    list.len()
                ),
            ));
        }
        for (i, (p, b)) in params.iter().zip(list).enumerate() {
            let Some((ty, dims)) = b.meta() else { continue };
            if p.element_type != Some(*ty) || &p.dims != dims {
                return Err(Error::invalid(
                    "execute",
                    format!(
                        "argument {i} on device {device} is {ty:?}{dims:?}, the program expects {:?}{:?}",
                        p.element_type, p.dims
                    ),
                ));
            }
        }
        Ok(())
    }

    fn run(
        &self,
        args: &[Vec<&Buffer>],
        device: *mut sys::PJRT_Device,
    ) -> Result<(Vec<Vec<Buffer>>, Running)> {
        let n = args.len();
        let num_args = args.first().map_or(0, Vec::len);
        for (d, list) in args.iter().enumerate() {
            if list.len() != num_args {
                return Err(Error::invalid(
                    "execute",
                    format!(
                        "device {d} got {} arguments, device 0 got {num_args}",
                        list.len()
                    ),
                ));
            }
            if list.iter().any(|b| !Arc::ptr_eq(b.client(), &self.client)) {
                return Err(Error::invalid(
                    "execute",
                    format!("an argument of device {d} belongs to another client"),
                ));
            }
            self.check_args(d, list)?;
        }
        let arg_ptrs: Vec<Vec<*mut sys::PJRT_Buffer>> = args
            .iter()
            .map(|l| l.iter().map(|b| b.raw).collect())
            .collect();
        let arg_lists: Vec<*const *mut sys::PJRT_Buffer> =
            arg_ptrs.iter().map(|l| l.as_ptr()).collect();
        let mut outs: Vec<Vec<*mut sys::PJRT_Buffer>> =
            vec![vec![std::ptr::null_mut(); self.num_outputs]; n];
        let out_lists: Vec<*mut *mut sys::PJRT_Buffer> =
            outs.iter_mut().map(|l| l.as_mut_ptr()).collect();
        let mut events: Vec<*mut sys::PJRT_Event> = vec![std::ptr::null_mut(); n];
        let mut options = args!(PJRT_ExecuteOptions {});
        let mut a = args!(PJRT_LoadedExecutable_Execute_Args {
            executable: self.raw,
            options: &mut options,
            argument_lists: arg_lists.as_ptr(),
            num_devices: n,
            num_args: num_args,
            output_lists: out_lists.as_ptr(),
            device_complete_events: events.as_mut_ptr(),
            execute_device: device,
        });
        let called = pjrt_call!(&self.client.plugin, PJRT_LoadedExecutable_Execute, &mut a);
        // Own every output and event before looking at errors, so nothing leaks.
        let buffers: Vec<Vec<Buffer>> = outs
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|p| !p.is_null())
                    .map(|&p| Buffer::wrap(self.client.clone(), p))
                    .collect()
            })
            .collect();
        let running = Running {
            client: self.client.clone(),
            events: events.into_iter().filter(|e| !e.is_null()).collect(),
        };
        called?;
        Ok((buffers, running))
    }
}

/// A launched execution ([`LoadedExecutable::execute_async`]): its
/// per-device completion events. Dropping it waits for the run (ignoring
/// its outcome) so that no event outlives it.
pub struct Running {
    client: Arc<ClientInner>,
    events: Vec<*mut sys::PJRT_Event>,
}

impl Running {
    /// Waits until every device has finished; the first failure, if any.
    pub fn wait(mut self) -> Result<()> {
        self.await_all()
    }

    fn await_all(&mut self) -> Result<()> {
        let mut awaited = Ok(());
        for e in std::mem::take(&mut self.events) {
            let r = self
                .client
                .plugin
                .await_event(e, "PJRT_LoadedExecutable_Execute");
            if awaited.is_ok() {
                awaited = r;
            }
        }
        awaited
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Its outcome reaches whoever reads the outputs.
        let _ = self.await_all();
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("devices", &self.events.len())
            .finish()
    }
}

impl std::fmt::Debug for Executable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executable")
            .field("name", &self.name().ok())
            .finish()
    }
}

impl std::fmt::Debug for LoadedExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedExecutable")
            .field("name", &self.executable.name().ok())
            .field("devices", &self.devices.len())
            .finish()
    }
}
