//! Loading a PJRT plugin `.so` and calling into its function table.

use std::collections::HashMap;
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sys;
use crate::{Error, Result};

/// Header version the bindings in `sys.rs` were generated from.
pub const HEADER_API_VERSION: (i32, i32) = (sys::PJRT_API_MAJOR as i32, sys::PJRT_API_MINOR as i32);

/// Fills a PJRT argument struct: zeroed, `struct_size` set, then the given fields.
macro_rules! args {
    ($ty:ident { $($field:ident : $value:expr),* $(,)? }) => {{
        // SAFETY: PJRT argument structs are plain C data for which all-zero bytes
        // mean "unset" (null pointers, zero sizes, `None` callbacks).
        #[allow(unused_mut)]
        let mut a: $crate::sys::$ty = unsafe { ::std::mem::zeroed() };
        a.struct_size = ::std::mem::size_of::<$crate::sys::$ty>();
        $(a.$field = $value;)*
        a
    }};
}

/// Calls one entry of the plugin's function table and converts its error.
macro_rules! pjrt_call {
    ($plugin:expr, $name:ident, $args:expr) => {{
        let plugin: &$crate::plugin::Plugin = $plugin;
        let offset = ::std::mem::offset_of!($crate::sys::PJRT_Api, $name);
        match plugin.entry(offset, plugin.api().$name) {
            None => Err($crate::Error::Unsupported {
                call: stringify!($name),
            }),
            Some(f) => {
                // SAFETY: `f` comes from the plugin's table and `$args` is a
                // correctly sized, initialised argument struct for it.
                let err = unsafe { f($args) };
                plugin.check(stringify!($name), err)
            }
        }
    }};
}
pub(crate) use {args, pjrt_call};

/// A loaded PJRT plugin. Loaded once per path and never unloaded.
pub struct Plugin {
    path: PathBuf,
    api: *const sys::PJRT_Api,
    version: (i32, i32),
    _lib: libloading::Library,
}

// SAFETY: the PJRT C API is thread-safe; the table pointer is immutable.
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

fn loaded() -> &'static Mutex<HashMap<PathBuf, Arc<Plugin>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

impl Plugin {
    /// Opens the plugin at `path` (dlopen + `GetPjrtApi`), checks its C API
    /// version against the header's, and runs `PJRT_Plugin_Initialize`.
    /// Loading the same path twice returns the same plugin.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Plugin>> {
        let path = path.as_ref();
        let key = path
            .canonicalize()
            .map_err(|e| Error::io("opening", path, e))?;
        let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(&key) {
            return Ok(p.clone());
        }
        let plugin = Arc::new(Self::open(&key)?);
        map.insert(key, plugin.clone());
        Ok(plugin)
    }

    fn open(path: &Path) -> Result<Plugin> {
        let load_err = |message: String| Error::Load {
            path: path.to_owned(),
            message,
        };
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("libtpu"))
        {
            prepare_libtpu_env();
        }
        // A CUDA plugin in an install tree: its NVIDIA libraries first.
        crate::install::cuda::preload(path)?;
        // SAFETY: loading a library runs its initialisers; PJRT plugins are
        // ordinary shared objects meant to be loaded this way.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin.
        let api = unsafe {
            let get: libloading::Symbol<unsafe extern "C" fn() -> *const sys::PJRT_Api> = lib
                .get(b"GetPjrtApi\0")
                .map_err(|e| load_err(e.to_string()))?;
            get()
        };
        if api.is_null() {
            return Err(load_err("GetPjrtApi returned null".into()));
        }
        // SAFETY: non-null table returned by the plugin, valid for the library's lifetime.
        let v = unsafe { &(*api).pjrt_api_version };
        let version = (v.major_version, v.minor_version);
        let (need_major, need_minor) = HEADER_API_VERSION;
        if version.0 != need_major || version.1 < need_minor {
            return Err(Error::ApiVersion {
                path: path.to_owned(),
                found_major: version.0,
                found_minor: version.1,
                need_major,
                need_minor,
            });
        }
        let plugin = Plugin {
            path: path.to_owned(),
            api,
            version,
            _lib: lib,
        };
        let mut args = args!(PJRT_Plugin_Initialize_Args {});
        pjrt_call!(&plugin, PJRT_Plugin_Initialize, &mut args)?;
        Ok(plugin)
    }

    /// The plugin's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PJRT C API version the plugin implements, `(major, minor)`.
    pub fn api_version(&self) -> (i32, i32) {
        self.version
    }

    pub(crate) fn api(&self) -> &sys::PJRT_Api {
        // SAFETY: checked non-null at load; lives as long as the library.
        unsafe { &*self.api }
    }

    /// An entry of the function table, or `None` when the plugin's table is
    /// too short to contain it (an older plugin) or leaves it unset.
    pub(crate) fn entry<F>(&self, offset: usize, f: Option<F>) -> Option<F> {
        if offset + std::mem::size_of::<Option<F>>() > self.api().struct_size {
            return None;
        }
        f
    }

    /// Converts a returned `PJRT_Error*` into a Rust error and destroys it.
    pub(crate) fn check(&self, call: &'static str, err: *mut sys::PJRT_Error) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        let api = self.api();
        let mut m = args!(PJRT_Error_Message_Args { error: err });
        let mut c = args!(PJRT_Error_GetCode_Args { error: err });
        let mut d = args!(PJRT_Error_Destroy_Args { error: err });
        // SAFETY: `err` is a live error from this plugin; the error entry points
        // are mandatory in every API version.
        let message = unsafe {
            if let Some(f) = api.PJRT_Error_Message {
                f(&mut m);
            }
            let code = match api.PJRT_Error_GetCode {
                Some(f) if f(&mut c).is_null() => c.code,
                _ => sys::PJRT_Error_Code::PJRT_Error_Code_UNKNOWN,
            };
            let msg = string_from(m.message, m.message_size);
            if let Some(f) = api.PJRT_Error_Destroy {
                f(&mut d);
            }
            (code, msg)
        };
        Err(Error::Pjrt {
            call,
            code: code_name(message.0),
            message: message.1,
        })
    }

    /// Waits for an event, destroys it, and returns its error if it failed.
    pub(crate) fn await_event(
        &self,
        event: *mut sys::PJRT_Event,
        call: &'static str,
    ) -> Result<()> {
        if event.is_null() {
            return Ok(());
        }
        let mut a = args!(PJRT_Event_Await_Args { event: event });
        let awaited = pjrt_call!(self, PJRT_Event_Await, &mut a).map_err(|e| match e {
            Error::Pjrt { code, message, .. } => Error::Pjrt {
                call,
                code,
                message,
            },
            other => other,
        });
        let mut d = args!(PJRT_Event_Destroy_Args { event: event });
        let destroyed = pjrt_call!(self, PJRT_Event_Destroy, &mut d);
        awaited.and(destroyed)
    }
}

/// libtpu retries a cloud metadata server for minutes unless told not to, and
/// refuses a second load in one machine unless allowed (parallel tests).
fn prepare_libtpu_env() {
    for (k, v) in [
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ] {
        if std::env::var_os(k).is_none() {
            // SAFETY: set once, before libtpu is loaded and starts threads.
            unsafe { std::env::set_var(k, v) };
        }
    }
}

/// Copies a (pointer, length) string owned by the plugin.
pub(crate) fn string_from(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the plugin hands out `len` readable bytes at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn code_name(code: sys::PJRT_Error_Code) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code.0 as usize).copied().unwrap_or("UNKNOWN")
}
