//! XLA device profiles through the PJRT profiler extension.
//!
//! A plugin that has a profiler chains a `PJRT_Profiler_Extension`
//! (`PJRT_Extension_Type_Profiler`) from its API table's
//! `extension_start`. Its `PLUGIN_Profiler_Api` (XLA's
//! `profiler_c_api.h`) creates a profiler session, starts and stops it,
//! and hands back what it recorded as a serialized `tensorflow.profiler.XSpace`
//! protocol buffer: the `.xplane.pb` TensorBoard's profile plugin (XProf)
//! opens. libtpu and the CUDA plugin chain one; XLA's CPU plugin does not.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use crate::plugin::{Plugin, string_from};
use crate::sys;
use crate::{Error, Result};

// The C structs of XLA's `profiler_c_api.h` (PLUGIN_PROFILER_VERSION 1).
#[repr(C)]
struct ErrorDestroyArgs {
    struct_size: usize,
    private: *mut c_void,
    error: *mut c_void,
}
#[repr(C)]
struct ErrorMessageArgs {
    struct_size: usize,
    private: *mut c_void,
    error: *const c_void,
    message: *const c_char,
    message_size: usize,
}
#[repr(C)]
struct CreateArgs {
    struct_size: usize,
    options: *const c_char,
    options_size: usize,
    profiler: *mut c_void,
}
/// The arguments of destroy, start and stop: the profiler alone.
#[repr(C)]
struct ProfilerArgs {
    struct_size: usize,
    profiler: *mut c_void,
}
#[repr(C)]
struct CollectDataArgs {
    struct_size: usize,
    profiler: *mut c_void,
    buffer: *mut u8,
    buffer_size_in_bytes: usize,
}
type Call<A> = Option<unsafe extern "C" fn(*mut A) -> *mut c_void>;
#[repr(C)]
struct ProfilerApi {
    struct_size: usize,
    private: *mut c_void,
    error_destroy: Option<unsafe extern "C" fn(*mut ErrorDestroyArgs)>,
    error_message: Option<unsafe extern "C" fn(*mut ErrorMessageArgs)>,
    error_get_code: Option<unsafe extern "C" fn(*mut c_void) -> *mut c_void>,
    create: Call<CreateArgs>,
    destroy: Call<ProfilerArgs>,
    start: Call<ProfilerArgs>,
    stop: Call<ProfilerArgs>,
    collect_data: Call<CollectDataArgs>,
}
/// `PJRT_Profiler_Extension`: the chain link, then the profiler table.
#[repr(C)]
struct ProfilerExtension {
    base: sys::PJRT_Extension_Base,
    profiler_api: *const ProfilerApi,
}

impl Plugin {
    /// The extension types (`PJRT_Extension_Type` values) the plugin chains
    /// from its API table, in chain order.
    pub fn extension_types(&self) -> Vec<u32> {
        self.extensions().map(|(t, _)| t).collect()
    }

    pub(crate) fn extensions(
        &self,
    ) -> impl Iterator<Item = (u32, *const sys::PJRT_Extension_Base)> + '_ {
        let mut next = self.api().extension_start as *const sys::PJRT_Extension_Base;
        std::iter::from_fn(move || {
            if next.is_null() {
                return None;
            }
            let at = next;
            // SAFETY: a non-null link of the plugin's extension chain, which
            // lives as long as the library.
            let base = unsafe { &*at };
            next = base.next;
            Some((base.type_.0, at))
        })
    }

    fn profiler_api(&self) -> Option<&ProfilerApi> {
        let want = sys::PJRT_Extension_Type::PJRT_Extension_Type_Profiler.0;
        let (_, link) = self.extensions().find(|&(t, _)| t == want)?;
        // SAFETY: a link of type Profiler is a `PJRT_Profiler_Extension`.
        let ext = unsafe { &*link.cast::<ProfilerExtension>() };
        // SAFETY: the table, when set, lives as long as the library.
        let api = unsafe { ext.profiler_api.as_ref()? };
        (api.struct_size >= std::mem::size_of::<ProfilerApi>()).then_some(api)
    }

    /// Whether the plugin has a profiler (the PJRT profiler extension).
    pub fn has_profiler(&self) -> bool {
        self.profiler_api().is_some()
    }
}

/// A running profiler session of a plugin.
pub struct Profiler {
    plugin: Arc<Plugin>,
    handle: *mut c_void,
    running: bool,
}

// SAFETY: the profiler C API is called from one thread at a time (the
// methods take `&mut self`), and sessions are not tied to a thread.
unsafe impl Send for Profiler {}

impl Profiler {
    /// Creates a session with default options and starts it; `None` when
    /// the plugin has no profiler extension.
    pub fn start(plugin: &Arc<Plugin>) -> Result<Option<Profiler>> {
        let Some(api) = plugin.profiler_api() else {
            return Ok(None);
        };
        let mut create = CreateArgs {
            struct_size: std::mem::size_of::<CreateArgs>(),
            options: c"".as_ptr(),
            options_size: 0,
            profiler: std::ptr::null_mut(),
        };
        // SAFETY: a correctly sized argument struct for the plugin's create.
        check(
            api,
            "PLUGIN_Profiler_Create",
            api.create.map(|f| unsafe { f(&mut create) }),
        )?;
        let mut p = Profiler {
            plugin: plugin.clone(),
            handle: create.profiler,
            running: false,
        };
        p.call("PLUGIN_Profiler_Start", |api| api.start)?;
        p.running = true;
        Ok(Some(p))
    }

    fn api(&self) -> &ProfilerApi {
        // invariant: `Profiler::start` refused a plugin without the profiler extension.
        self.plugin.profiler_api().expect("checked at start")
    }

    fn call(
        &mut self,
        what: &'static str,
        f: impl Fn(&ProfilerApi) -> Call<ProfilerArgs>,
    ) -> Result<()> {
        let api = self.api();
        let mut a = ProfilerArgs {
            struct_size: std::mem::size_of::<ProfilerArgs>(),
            profiler: self.handle,
        };
        // SAFETY: a live session and a correctly sized argument struct.
        check(api, what, f(api).map(|f| unsafe { f(&mut a) }))
    }

    /// Stops the session and returns what it recorded: a serialized
    /// `XSpace` (empty if the plugin recorded nothing).
    pub fn stop(mut self) -> Result<Vec<u8>> {
        self.call("PLUGIN_Profiler_Stop", |api| api.stop)?;
        self.running = false;
        let api = self.api();
        let mut a = CollectDataArgs {
            struct_size: std::mem::size_of::<CollectDataArgs>(),
            profiler: self.handle,
            buffer: std::ptr::null_mut(),
            buffer_size_in_bytes: 0,
        };
        // SAFETY: a stopped session and a correctly sized argument struct.
        check(
            api,
            "PLUGIN_Profiler_CollectData",
            api.collect_data.map(|f| unsafe { f(&mut a) }),
        )?;
        let mut data = if a.buffer.is_null() {
            // The two-call protocol: we allocate, the plugin fills.
            let mut buf = vec![0u8; a.buffer_size_in_bytes];
            a.buffer = buf.as_mut_ptr();
            // SAFETY: `buf` holds the `buffer_size_in_bytes` the plugin asked for.
            check(
                api,
                "PLUGIN_Profiler_CollectData",
                api.collect_data.map(|f| unsafe { f(&mut a) }),
            )?;
            buf.truncate(a.buffer_size_in_bytes);
            buf
        } else {
            // SAFETY: the plugin's own buffer, alive until the session is destroyed.
            unsafe { std::slice::from_raw_parts(a.buffer, a.buffer_size_in_bytes) }.to_vec()
        };
        // XLA's implementation hands out its buffer with one extra zero
        // byte, which is not protocol buffer data.
        if !well_formed(&data) && data.last() == Some(&0) && well_formed(&data[..data.len() - 1]) {
            data.pop();
        }
        Ok(data)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.running {
            let _ = self.call("PLUGIN_Profiler_Stop", |api| api.stop);
        }
        let _ = self.call("PLUGIN_Profiler_Destroy", |api| api.destroy);
    }
}

/// Converts a returned `PLUGIN_Profiler_Error*` (or a missing entry) into a
/// Rust error, destroying it.
fn check(api: &ProfilerApi, call: &'static str, returned: Option<*mut c_void>) -> Result<()> {
    let Some(err) = returned else {
        return Err(Error::Unsupported { call });
    };
    if err.is_null() {
        return Ok(());
    }
    let mut m = ErrorMessageArgs {
        struct_size: std::mem::size_of::<ErrorMessageArgs>(),
        private: std::ptr::null_mut(),
        error: err,
        message: std::ptr::null(),
        message_size: 0,
    };
    let mut d = ErrorDestroyArgs {
        struct_size: std::mem::size_of::<ErrorDestroyArgs>(),
        private: std::ptr::null_mut(),
        error: err,
    };
    // SAFETY: `err` is a live error of this profiler; the message is copied
    // before the error is destroyed.
    let message = unsafe {
        if let Some(f) = api.error_message {
            f(&mut m);
        }
        let text = string_from(m.message, m.message_size);
        if let Some(f) = api.error_destroy {
            f(&mut d);
        }
        text
    };
    Err(Error::Pjrt {
        call,
        code: "UNKNOWN",
        message,
    })
}

/// Whether `bytes` parse as a sequence of protocol buffer fields.
fn well_formed(mut bytes: &[u8]) -> bool {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else {
            return false;
        };
        if key >> 3 == 0 {
            return false;
        }
        let skip = match key & 7 {
            0 => match varint(&mut bytes) {
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            2 => match varint(&mut bytes) {
                Some(n) => n as usize,
                None => return false,
            },
            5 => 4,
            _ => return false,
        };
        match bytes.get(skip..) {
            Some(rest) => bytes = rest,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trailing_zero_is_not_protobuf() {
        // field 1 (LEN) "ab", field 2 varint 1.
        let msg = [0x0a, 2, b'a', b'b', 0x10, 1];
        assert!(super::well_formed(&msg));
        let mut cut = msg.to_vec();
        cut.push(0);
        assert!(!super::well_formed(&cut));
        assert!(!super::well_formed(&msg[..3]));
    }
}
