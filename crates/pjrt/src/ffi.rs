//! Custom calls: typed XLA FFI handlers, registered with a plugin through
//! the PJRT FFI extension (`PJRT_Extension_Type_FFI`) and called from a
//! program as `stablehlo.custom_call @target(...) {api_version = 4}`.
//!
//! The structs below follow XLA's FFI C API (`xla/ffi/api/c_api.h`): a
//! handler gets one [`CallFrame`] per call, whose arguments and results are
//! [`FfiBuffer`]s. Before the first call XLA asks the handler for its
//! metadata (the FFI API version it speaks) with a frame whose extension
//! chain holds a metadata link; [`answer_metadata`] answers it.

use std::ffi::{CString, c_char, c_void};

use crate::{Error, Plugin, Result, sys};

/// `XLA_FFI_Handler`: called with a call frame, returns null or an error
/// made by [`error`].
pub type Handler = unsafe extern "C" fn(*mut CallFrame) -> *mut c_void;

/// `XLA_FFI_Extension_Base`.
#[repr(C)]
pub struct ExtensionBase {
    /// Size of the extension struct.
    pub struct_size: usize,
    /// `XLA_FFI_Extension_Type` (1: metadata).
    pub kind: i32,
    /// The next link.
    pub next: *mut ExtensionBase,
}

/// `XLA_FFI_Api_Version`.
#[repr(C)]
pub struct ApiVersion {
    /// Size of this struct.
    pub struct_size: usize,
    /// Unused.
    pub extension_start: *mut ExtensionBase,
    /// Major version.
    pub major: i32,
    /// Minor version.
    pub minor: i32,
}

/// The head of `XLA_FFI_Api` (the entries this crate uses).
#[repr(C)]
pub struct Api {
    /// Size of the table.
    pub struct_size: usize,
    /// Extensions.
    pub extension_start: *mut ExtensionBase,
    /// The FFI API version XLA implements.
    pub api_version: ApiVersion,
    /// XLA internals.
    pub internal_api: *mut c_void,
    /// `XLA_FFI_Error_Create`.
    pub error_create: Option<unsafe extern "C" fn(*mut ErrorCreateArgs) -> *mut c_void>,
}

/// `XLA_FFI_Error_Create_Args`.
#[repr(C)]
pub struct ErrorCreateArgs {
    /// Size of this struct.
    pub struct_size: usize,
    /// Unused.
    pub extension_start: *mut ExtensionBase,
    /// The message (copied by XLA).
    pub message: *const c_char,
    /// `XLA_FFI_Error_Code`.
    pub errc: i32,
}

/// `XLA_FFI_Args` (and `XLA_FFI_Rets`: the same layout).
#[repr(C)]
pub struct Args {
    /// Size of this struct.
    pub struct_size: usize,
    /// Unused.
    pub extension_start: *mut ExtensionBase,
    /// How many.
    pub size: i64,
    /// Each one's kind (1: buffer).
    pub types: *mut i32,
    /// Each one, an [`FfiBuffer`] when its kind is 1.
    pub args: *mut *mut c_void,
}

/// `XLA_FFI_Attrs`.
#[repr(C)]
pub struct Attrs {
    /// Size of this struct.
    pub struct_size: usize,
    /// Unused.
    pub extension_start: *mut ExtensionBase,
    /// How many.
    pub size: i64,
    /// Their kinds.
    pub types: *mut i32,
    /// Their names.
    pub names: *mut c_void,
    /// Their values.
    pub attrs: *mut *mut c_void,
}

/// `XLA_FFI_CallFrame`.
#[repr(C)]
pub struct CallFrame {
    /// Size of this struct.
    pub struct_size: usize,
    /// Extensions (the metadata query).
    pub extension_start: *mut ExtensionBase,
    /// XLA's FFI table.
    pub api: *const Api,
    /// Execution context.
    pub ctx: *mut c_void,
    /// `XLA_FFI_ExecutionStage` (3: execute).
    pub stage: i32,
    /// Operands.
    pub args: Args,
    /// Results.
    pub rets: Args,
    /// Attributes.
    pub attrs: Attrs,
}

/// `XLA_FFI_Buffer`: one operand or result.
#[repr(C)]
pub struct FfiBuffer {
    /// Size of this struct.
    pub struct_size: usize,
    /// Unused.
    pub extension_start: *mut ExtensionBase,
    /// `XLA_FFI_DataType` (the `PrimitiveType` numbers: 11 f32, 16 bf16).
    pub dtype: i32,
    /// The data, row-major.
    pub data: *mut c_void,
    /// Rank.
    pub rank: i64,
    /// Dimensions (`rank` of them).
    pub dims: *const i64,
}

impl FfiBuffer {
    /// The dimensions.
    pub fn dims(&self) -> &[i64] {
        if self.rank <= 0 || self.dims.is_null() {
            return &[];
        }
        // SAFETY: XLA passes `rank` dimensions, alive for the call.
        unsafe { std::slice::from_raw_parts(self.dims, self.rank as usize) }
    }
}

/// `XLA_FFI_DataType_S32`.
pub const S32: i32 = 4;
/// `XLA_FFI_DataType_F32`.
pub const F32: i32 = 11;
/// `XLA_FFI_DataType_BF16`.
pub const BF16: i32 = 16;
/// `XLA_FFI_ExecutionStage_EXECUTE`.
pub const EXECUTE: i32 = 3;

/// `XLA_FFI_Metadata` (its stable head).
#[repr(C)]
struct Metadata {
    struct_size: usize,
    api_version: ApiVersion,
    traits: u32,
}

/// `XLA_FFI_Metadata_Extension`.
#[repr(C)]
struct MetadataExtension {
    base: ExtensionBase,
    metadata: *mut Metadata,
}

/// Answers XLA's metadata query (the FFI version the handler speaks: the
/// one XLA's table reports, no traits); true when `frame` was one.
///
/// # Safety
/// `frame` is a call frame XLA passed to a handler.
pub unsafe fn answer_metadata(frame: *mut CallFrame) -> bool {
    // SAFETY: the caller passes XLA's frame; links are XLA's structs.
    unsafe {
        let mut link = (*frame).extension_start;
        while !link.is_null() {
            if (*link).kind == 1 {
                let m = (*link.cast::<MetadataExtension>()).metadata;
                if !m.is_null() {
                    let api = (*frame).api;
                    let (major, minor) = if api.is_null() {
                        (0, 1)
                    } else {
                        ((*api).api_version.major, (*api).api_version.minor)
                    };
                    (*m).api_version.major = major;
                    (*m).api_version.minor = minor;
                    (*m).traits = 0;
                }
                return true;
            }
            link = (*link).next;
        }
        false
    }
}

/// Operand `i` of a call as a buffer, if it is one.
///
/// # Safety
/// `frame` is a call frame XLA passed to a handler at the execute stage.
pub unsafe fn arg<'a>(frame: *mut CallFrame, i: usize) -> Option<&'a FfiBuffer> {
    // SAFETY: as documented; the kinds and pointers are XLA's.
    unsafe { buffer_of(&(*frame).args, i) }
}

/// Result `i` of a call as a buffer, if it is one.
///
/// # Safety
/// As [`arg`].
pub unsafe fn ret<'a>(frame: *mut CallFrame, i: usize) -> Option<&'a FfiBuffer> {
    // SAFETY: as documented.
    unsafe { buffer_of(&(*frame).rets, i) }
}

unsafe fn buffer_of<'a>(list: &Args, i: usize) -> Option<&'a FfiBuffer> {
    if i as i64 >= list.size || list.types.is_null() || list.args.is_null() {
        return None;
    }
    // SAFETY: `i < size`; kind 1 entries point at `XLA_FFI_Buffer`s.
    unsafe {
        if *list.types.add(i) != 1 {
            return None;
        }
        (*list.args.add(i)).cast::<FfiBuffer>().as_ref()
    }
}

/// An `XLA_FFI_Error` (code INVALID_ARGUMENT) saying `message`, to return
/// from a handler; null when XLA's table cannot make one.
///
/// # Safety
/// As [`arg`].
pub unsafe fn error(frame: *mut CallFrame, message: &str) -> *mut c_void {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the frame's table is XLA's; the message outlives the call,
    // which copies it.
    unsafe {
        let api = (*frame).api;
        if api.is_null() {
            return std::ptr::null_mut();
        }
        let Some(create) = (*api).error_create else {
            return std::ptr::null_mut();
        };
        let mut a = ErrorCreateArgs {
            struct_size: std::mem::size_of::<ErrorCreateArgs>(),
            extension_start: std::ptr::null_mut(),
            message: text.as_ptr(),
            errc: 3,
        };
        create(&mut a)
    }
}

/// `PJRT_FFI_Register_Handler_Args` as PJRT C API 0.115 lays it out (the
/// pinned CPU plugin's, read from its code: 52 bytes, the handler typed,
/// no `api_version` field; later headers insert one after the name).
#[repr(C)]
struct RegisterArgs {
    struct_size: usize,
    target_name: *const c_char,
    target_name_size: usize,
    handler: *mut c_void,
    platform_name: *const c_char,
    platform_name_size: usize,
    traits: u32,
}

/// The plugin API versions whose `RegisterArgs` layout is known.
const KNOWN_LAYOUT: (i32, i32) = (0, 115);

/// `PJRT_FFI_Extension`: the chain link, then its entries.
#[repr(C)]
struct FfiExtension {
    base: sys::PJRT_Extension_Base,
    type_id_register: *mut c_void,
    user_data_add: *mut c_void,
    register_handler: Option<unsafe extern "C" fn(*mut RegisterArgs) -> *mut sys::PJRT_Error>,
}

impl Plugin {
    fn ffi_extension(&self) -> Option<&FfiExtension> {
        let want = sys::PJRT_Extension_Type::PJRT_Extension_Type_FFI.0;
        let (_, link) = self.extensions().find(|&(t, _)| t == want)?;
        // SAFETY: a link of type FFI is a `PJRT_FFI_Extension`.
        let ext = unsafe { &*link.cast::<FfiExtension>() };
        (ext.base.struct_size >= std::mem::size_of::<FfiExtension>()
            && ext.register_handler.is_some()
            && self.api_version() == KNOWN_LAYOUT)
            .then_some(ext)
    }

    /// Whether the plugin can register FFI handlers (the PJRT FFI extension,
    /// in a plugin API version whose registration layout this crate knows:
    /// 0.115).
    pub fn has_ffi(&self) -> bool {
        self.ffi_extension().is_some()
    }

    /// Registers a typed FFI handler as custom-call target `target` of
    /// `platform` (`"Host"` for the CPU plugin), for every client of the
    /// plugin's library in this process.
    ///
    /// # Safety
    /// `handler` must follow XLA's FFI contract for every call frame it is
    /// given (answer the metadata query, check its operands).
    pub unsafe fn register_ffi_handler(
        &self,
        target: &str,
        platform: &str,
        handler: Handler,
    ) -> Result<()> {
        let ext = self.ffi_extension().ok_or(Error::Unsupported {
            call: "PJRT_FFI_Extension",
        })?;
        let mut args = RegisterArgs {
            struct_size: std::mem::offset_of!(RegisterArgs, traits) + 4,
            target_name: target.as_ptr().cast(),
            target_name_size: target.len(),
            handler: handler as *mut c_void,
            platform_name: platform.as_ptr().cast(),
            platform_name_size: platform.len(),
            traits: 0,
        };
        // invariant: checked by `ffi_extension`.
        let f = ext.register_handler.expect("register_handler is set");
        // SAFETY: the args point at live strings with their lengths; the
        // handler's contract is the caller's.
        let err = unsafe { f(&mut args) };
        self.check("PJRT_FFI_Register_Handler", err)
    }
}
