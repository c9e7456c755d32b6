//! The key-value store a plugin's distributed runtime uses to exchange
//! topology between the processes of a multi-process client (the CUDA
//! plugin's `kv_get` / `kv_try_get` / `kv_put` callbacks in
//! `PJRT_Client_Create_Args`). meshtrain's coordinator serves such a store;
//! [`crate::Client::with_key_value_store`] hands one to a plugin.
//!
//! The callbacks are C functions receiving the store through `user_arg`;
//! values handed to the plugin are allocated here with a length header and
//! freed by the deleter given with them.

use std::ffi::c_void;
use std::time::Duration;

use crate::sys;

/// A store shared by the processes of a job. Errors are messages; a
/// missing key in `try_get` is `Ok(None)`.
pub trait KeyValueStore: Send + Sync {
    /// The value of `key`, waiting up to `timeout` for another process to put it.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, String>;
    /// The value of `key` if present now.
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), String>;
}

/// What the client keeps alive for the plugin's callbacks.
pub(crate) type StoreBox = Box<std::sync::Arc<dyn KeyValueStore>>;

/// Fills the callback fields of a client-create call with `store`.
pub(crate) fn install(a: &mut sys::PJRT_Client_Create_Args, store: &StoreBox) {
    // The heap address of the boxed `Arc`, which stays put when the box
    // itself is moved (into the client, after the create call).
    let arg = &**store as *const std::sync::Arc<dyn KeyValueStore> as *mut c_void;
    a.kv_get_callback = Some(kv_get);
    a.kv_get_user_arg = arg;
    a.kv_try_get_callback = Some(kv_try_get);
    a.kv_try_get_user_arg = arg;
    a.kv_put_callback = Some(kv_put);
    a.kv_put_user_arg = arg;
}

/// # Safety
/// `ptr` is null or points to `len` readable bytes.
unsafe fn text(ptr: *const std::ffi::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: per the caller.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
        .into_owned()
}

/// # Safety
/// `callback_error` is the plugin's error constructor.
unsafe fn error(
    callback_error: *mut sys::PJRT_CallbackError,
    code: sys::PJRT_Error_Code,
    message: &str,
) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes a valid pointer to its constructor.
    match unsafe { callback_error.as_ref() }.copied().flatten() {
        Some(f) => unsafe { f(code, message.as_ptr().cast(), message.len()) },
        None => std::ptr::null_mut(),
    }
}

/// A copy of `value` the plugin frees with [`free_value`]: 8 bytes of
/// length before the data.
fn hand_over(value: &[u8]) -> (*mut std::ffi::c_char, usize) {
    let mut buf = Vec::with_capacity(8 + value.len());
    buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    buf.extend_from_slice(value);
    let boxed = buf.into_boxed_slice();
    let base = Box::into_raw(boxed) as *mut u8;
    // SAFETY: the allocation is 8 + len bytes long.
    (unsafe { base.add(8) }.cast(), value.len())
}

/// Frees a value made by [`hand_over`].
unsafe extern "C" fn free_value(value: *mut std::ffi::c_char) {
    if value.is_null() {
        return;
    }
    // SAFETY: `value` came from `hand_over`: the length sits 8 bytes before.
    unsafe {
        let base = value.cast::<u8>().sub(8);
        let len = u64::from_le_bytes(*(base as *const [u8; 8])) as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            base,
            8 + len,
        )));
    }
}

/// # Safety
/// `user_arg` is the boxed `Arc` of the `StoreBox` installed by [`install`].
unsafe fn store<'a>(user_arg: *mut c_void) -> &'a dyn KeyValueStore {
    // SAFETY: per the caller; the client keeps the box alive.
    unsafe { &*(user_arg as *const std::sync::Arc<dyn KeyValueStore>) }.as_ref()
}

/// Runs a store call so that a panic in it becomes an error returned to the
/// plugin: unwinding across the C boundary would abort the process.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the key-value store panicked".into()))
}

unsafe extern "C" fn kv_get(a: *mut sys::PJRT_KeyValueGetCallback_Args) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes valid arguments.
    let a = unsafe { &mut *a };
    let key = unsafe { text(a.key, a.key_size) };
    let timeout = Duration::from_millis(a.timeout_in_ms.max(0) as u64);
    match guarded(|| unsafe { store(a.user_arg) }.get(&key, timeout)) {
        Ok(v) => {
            (a.value, a.value_size) = hand_over(&v);
            a.value_deleter_callback = Some(free_value);
            std::ptr::null_mut()
        }
        Err(m) => unsafe {
            error(
                a.callback_error,
                sys::PJRT_Error_Code::PJRT_Error_Code_DEADLINE_EXCEEDED,
                &m,
            )
        },
    }
}

unsafe extern "C" fn kv_try_get(
    a: *mut sys::PJRT_KeyValueTryGetCallback_Args,
) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes valid arguments.
    let a = unsafe { &mut *a };
    let key = unsafe { text(a.key, a.key_size) };
    match guarded(|| unsafe { store(a.user_arg) }.try_get(&key)) {
        Ok(Some(v)) => {
            (a.value, a.value_size) = hand_over(&v);
            a.value_deleter_callback = Some(free_value);
            std::ptr::null_mut()
        }
        Ok(None) => unsafe {
            error(
                a.callback_error,
                sys::PJRT_Error_Code::PJRT_Error_Code_NOT_FOUND,
                &format!("key {key} not found"),
            )
        },
        Err(m) => unsafe {
            error(
                a.callback_error,
                sys::PJRT_Error_Code::PJRT_Error_Code_INTERNAL,
                &m,
            )
        },
    }
}

unsafe extern "C" fn kv_put(a: *mut sys::PJRT_KeyValuePutCallback_Args) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes valid arguments.
    let a = unsafe { &mut *a };
    let key = unsafe { text(a.key, a.key_size) };
    let value = if a.value.is_null() {
        &[][..]
    } else {
        // SAFETY: `value` has `value_size` bytes.
        unsafe { std::slice::from_raw_parts(a.value.cast::<u8>(), a.value_size) }
    };
    match guarded(|| unsafe { store(a.user_arg) }.put(&key, value)) {
        Ok(()) => std::ptr::null_mut(),
        Err(m) => unsafe {
            error(
                a.callback_error,
                sys::PJRT_Error_Code::PJRT_Error_Code_INTERNAL,
                &m,
            )
        },
    }
}

/// The callbacks of a store driven exactly as a plugin's distributed
/// runtime drives them: `PJRT_Client_Create_Args` filled by the same code a
/// client uses, C argument structs, the plugin's error constructor (stood
/// in for here), and the value deleter. For testing a [`KeyValueStore`]
/// (for example one served over the network) through the C boundary.
pub struct PluginSide {
    create: sys::PJRT_Client_Create_Args,
    _store: StoreBox,
}

// SAFETY: the argument struct holds only the callbacks and pointers to the
// boxed store, which is `Send + Sync` and lives as long as `self`.
unsafe impl Send for PluginSide {}
// SAFETY: as above; the callbacks take `&self` of the store.
unsafe impl Sync for PluginSide {}

/// An error a callback returned to the plugin: `(PJRT error code, message)`.
pub type CallbackFailure = (u32, String);

thread_local! {
    static LAST_ERROR: std::cell::RefCell<Option<CallbackFailure>> = const { std::cell::RefCell::new(None) };
}

/// Stands in for the plugin's error constructor: records the error.
unsafe extern "C" fn record_error(
    code: sys::PJRT_Error_Code,
    message: *const std::ffi::c_char,
    size: usize,
) -> *mut sys::PJRT_Error {
    // SAFETY: the callbacks pass their message and its length.
    let m = unsafe { text(message, size) };
    LAST_ERROR.with(|e| *e.borrow_mut() = Some((code.0, m)));
    std::ptr::dangling_mut()
}

fn failure() -> CallbackFailure {
    LAST_ERROR
        .with(|e| e.borrow_mut().take())
        .unwrap_or((0, "an error without a message".into()))
}

impl PluginSide {
    /// Installs `store`'s callbacks as a client would.
    pub fn new(store: std::sync::Arc<dyn KeyValueStore>) -> PluginSide {
        let store: StoreBox = Box::new(store);
        // SAFETY: an all-zero argument struct is the C API's empty value.
        let mut create: sys::PJRT_Client_Create_Args = unsafe { std::mem::zeroed() };
        install(&mut create, &store);
        PluginSide {
            create,
            _store: store,
        }
    }

    /// `kv_put` through the C callback.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), CallbackFailure> {
        let mut ctor: sys::PJRT_CallbackError = Some(record_error);
        // SAFETY: zeroed, then every field the callback reads is set.
        let mut a: sys::PJRT_KeyValuePutCallback_Args = unsafe { std::mem::zeroed() };
        a.key = key.as_ptr().cast();
        a.key_size = key.len();
        a.value = value.as_ptr().cast();
        a.value_size = value.len();
        a.callback_error = &mut ctor;
        a.user_arg = self.create.kv_put_user_arg;
        // invariant: `install` set every callback in `PluginSide::new`.
        let f = self.create.kv_put_callback.expect("installed");
        // SAFETY: the arguments are valid for the call.
        if unsafe { f(&mut a) }.is_null() {
            Ok(())
        } else {
            Err(failure())
        }
    }

    /// `kv_get` through the C callback, waiting up to `timeout_ms`.
    pub fn get(&self, key: &str, timeout_ms: i32) -> Result<Vec<u8>, CallbackFailure> {
        let mut ctor: sys::PJRT_CallbackError = Some(record_error);
        // SAFETY: zeroed, then every field the callback reads is set.
        let mut a: sys::PJRT_KeyValueGetCallback_Args = unsafe { std::mem::zeroed() };
        a.key = key.as_ptr().cast();
        a.key_size = key.len();
        a.timeout_in_ms = timeout_ms;
        a.callback_error = &mut ctor;
        a.user_arg = self.create.kv_get_user_arg;
        // invariant: `install` set every callback in `PluginSide::new`.
        let f = self.create.kv_get_callback.expect("installed");
        // SAFETY: the arguments are valid for the call.
        if !unsafe { f(&mut a) }.is_null() {
            return Err(failure());
        }
        // SAFETY: the callback handed over `value_size` bytes at `value`,
        // freed by its deleter as the plugin would.
        unsafe {
            let v = std::slice::from_raw_parts(a.value.cast::<u8>(), a.value_size).to_vec();
            // invariant: the callback sets a deleter whenever it returns a value.
            a.value_deleter_callback.expect("a deleter with a value")(a.value);
            Ok(v)
        }
    }

    /// `kv_try_get` through the C callback; a missing key is `NOT_FOUND`.
    pub fn try_get(&self, key: &str) -> Result<Vec<u8>, CallbackFailure> {
        let mut ctor: sys::PJRT_CallbackError = Some(record_error);
        // SAFETY: zeroed, then every field the callback reads is set.
        let mut a: sys::PJRT_KeyValueTryGetCallback_Args = unsafe { std::mem::zeroed() };
        a.key = key.as_ptr().cast();
        a.key_size = key.len();
        a.callback_error = &mut ctor;
        a.user_arg = self.create.kv_try_get_user_arg;
        // invariant: `install` set every callback in `PluginSide::new`.
        let f = self.create.kv_try_get_callback.expect("installed");
        // SAFETY: the arguments are valid for the call.
        if !unsafe { f(&mut a) }.is_null() {
            return Err(failure());
        }
        // SAFETY: as in `get`.
        unsafe {
            let v = std::slice::from_raw_parts(a.value.cast::<u8>(), a.value_size).to_vec();
            // invariant: the callback sets a deleter whenever it returns a value.
            a.value_deleter_callback.expect("a deleter with a value")(a.value);
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The callbacks driven the way a plugin drives them.
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, Vec<u8>>>);

    impl KeyValueStore for Memory {
        fn get(&self, key: &str, _: Duration) -> Result<Vec<u8>, String> {
            self.0
                .lock()
                .unwrap()
                .get(key)
                .cloned()
                .ok_or(format!("timed out waiting for {key}"))
        }
        fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.lock().unwrap().insert(key.into(), value.into());
            Ok(())
        }
    }

    #[test]
    fn put_get_try_get_and_errors_through_the_c_callbacks() {
        let side = PluginSide::new(Arc::new(Memory::default()));
        let (key, value) = ("gpu:0:topology", b"\x00\x01binary\xff".to_vec());
        side.put(key, &value).unwrap();
        assert_eq!(side.get(key, 100).unwrap(), value);
        assert_eq!(side.try_get(key).unwrap(), value);

        let missing = "gpu:1:topology";
        let (code, message) = side.try_get(missing).unwrap_err();
        assert_eq!(code, sys::PJRT_Error_Code::PJRT_Error_Code_NOT_FOUND.0);
        assert!(message.contains(missing));
        let (code, message) = side.get(missing, 100).unwrap_err();
        assert_eq!(
            code,
            sys::PJRT_Error_Code::PJRT_Error_Code_DEADLINE_EXCEEDED.0
        );
        assert!(message.contains("timed out"));
    }

    struct Panics;

    impl KeyValueStore for Panics {
        fn get(&self, _: &str, _: Duration) -> Result<Vec<u8>, String> {
            panic!("store bug")
        }
        fn try_get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
            panic!("store bug")
        }
        fn put(&self, _: &str, _: &[u8]) -> Result<(), String> {
            panic!("store bug")
        }
    }

    #[test]
    fn a_panicking_store_is_an_error_to_the_plugin_not_an_abort() {
        let side = PluginSide::new(Arc::new(Panics));
        for r in [
            side.put("k", b"v").map(drop),
            side.get("k", 10).map(drop),
            side.try_get("k").map(drop),
        ] {
            assert!(r.unwrap_err().1.contains("panicked"));
        }
    }
}
