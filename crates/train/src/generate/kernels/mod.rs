//! Decode-step weight matmuls as custom calls on the CPU plugin.
//!
//! A decode step multiplies a few rows of activations (the batch) by every
//! weight matrix: at batch 1 it reads all weights once per token and is
//! bound by memory; XLA's CPU backend widens bf16 weights to f32 on every
//! call, so bf16 weights cost as much to read as f32 ones. These kernels
//! ([`matmul`]) read the weights as stored (bf16: half the bytes), sum in
//! f32 and split the weight rows between the cores ([`pool`]). They are
//! registered with the plugin as typed XLA FFI handlers ([`pjrt::ffi`])
//! and called from the decode program through [`gemma::Matmuls::Kernel`].
//!
//! Used only where the plugin has the FFI extension, the program runs on
//! one device and the CPU has the fast path (AVX-512 BF16 for bf16,
//! AVX-512F for f32); `MESHTRAIN_DECODE_KERNELS=0` turns them off
//! (`bf16` or `f32`: only that one on).

mod attention;
mod matmul;
mod pool;

use std::ffi::c_void;
use std::sync::Mutex;

use hlo::DType;
use pjrt::bf16;
use pjrt::ffi::{self, CallFrame};

use matmul::Elem;

/// The custom-call target of the bf16 kernel.
pub const BF16_TARGET: &str = "meshtrain_decode_matmul_bf16";
/// The custom-call target of the f32 kernel.
pub const F32_TARGET: &str = "meshtrain_decode_matmul_f32";
/// The custom-call target of the bf16 attention kernel.
pub const BF16_ATTENTION: &str = "meshtrain_decode_attention_bf16";
/// The custom-call target of the f32 attention kernel.
pub const F32_ATTENTION: &str = "meshtrain_decode_attention_f32";
/// The environment variable that sets how many threads the kernels use
/// (default: one per core).
pub const THREADS_ENV: &str = "MESHTRAIN_DECODE_KERNEL_THREADS";
/// The environment variable that turns the kernels off (`0`) or limits
/// them to one dtype (`bf16`, `f32`).
pub const ENV: &str = "MESHTRAIN_DECODE_KERNELS";

/// The target for weights and activations of `dtype`, when this CPU has
/// its fast path and [`ENV`] allows it (not whether a plugin has it
/// registered: see [`register`]).
pub fn target(dtype: DType) -> Option<&'static str> {
    let allowed = std::env::var(ENV).unwrap_or_default();
    let wants = |name: &str| matches!(allowed.as_str(), "" | "1") || allowed == name;
    match dtype {
        DType::BF16 if wants("bf16") && matmul::fast::<bf16>() => Some(BF16_TARGET),
        DType::F32 if wants("f32") && matmul::fast::<f32>() => Some(F32_TARGET),
        _ => None,
    }
}

/// The attention kernel that goes with the matmul kernel `target` (the
/// same dtype; [`attention`]'s custom call).
pub fn attention_target(target: &str) -> Option<&'static str> {
    match target {
        BF16_TARGET => Some(BF16_ATTENTION),
        F32_TARGET => Some(F32_ATTENTION),
        _ => None,
    }
}

/// Registers the kernels with `plugin` (once per plugin library in this
/// process). False when the plugin has no FFI extension.
pub fn register(plugin: &pjrt::Plugin) -> pjrt::Result<bool> {
    static DONE: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
    if !plugin.has_ffi() {
        return Ok(false);
    }
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|p| p == plugin.path()) {
        return Ok(true);
    }
    // SAFETY: the handlers answer the metadata query and check every
    // operand's dtype and dimensions before reading it.
    unsafe {
        plugin.register_ffi_handler(BF16_TARGET, "Host", handle_bf16)?;
        plugin.register_ffi_handler(F32_TARGET, "Host", handle_f32)?;
        plugin.register_ffi_handler(BF16_ATTENTION, "Host", attend_bf16)?;
        plugin.register_ffi_handler(F32_ATTENTION, "Host", attend_f32)?;
    }
    done.push(plugin.path().to_path_buf());
    Ok(true)
}

/// `y = x w^T` on the host, as the custom call computes it (for tests
/// and benches of the kernel itself): `x [m, k]`, `w [n, k]`.
pub fn matmul_bf16(x: &[bf16], w: &[bf16], m: usize, k: usize, n: usize) -> Vec<bf16> {
    host_matmul(x, w, m, k, n)
}

/// The f32 kernel on the host; see [`matmul_bf16`].
pub fn matmul_f32(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    host_matmul(x, w, m, k, n)
}

fn host_matmul<T: Elem>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "x [m, k] and w [n, k]"
    );
    let mut y = vec![T::from_f32(0.0); m * n];
    // SAFETY: the lengths were checked.
    unsafe { run(x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), (m, k, n)) };
    y
}

/// Splits the output columns between the pool's threads.
///
/// # Safety
/// `x` holds `m * k`, `w` `n * k` and `y` `m * n` elements.
unsafe fn run<T: Elem>(x: *const T, w: *const T, y: *mut T, (m, k, n): (usize, usize, usize)) {
    let fast = matmul::fast::<T>();
    let (xa, wa, ya) = (x as usize, w as usize, y as usize);
    // Small products are not worth waking a thread for.
    let parts = if m * k * n < 1 << 16 {
        1
    } else {
        pool::threads()
    };
    // Column blocks of a multiple of 4 rows of `w` (one tile).
    let block = n.div_ceil(parts).div_ceil(4) * 4;
    let task = |p: usize| {
        let (n0, n1) = ((p * block).min(n), ((p + 1) * block).min(n));
        if n0 < n1 {
            // SAFETY: the caller's bounds; parts write disjoint columns.
            unsafe {
                matmul::rows(
                    xa as *const T,
                    wa as *const T,
                    ya as *mut T,
                    (m, k, n),
                    (n0, n1),
                    fast,
                )
            };
        }
    };
    pool::run(parts, &task);
}

unsafe extern "C" fn handle_bf16(frame: *mut CallFrame) -> *mut c_void {
    // SAFETY: XLA's frame.
    unsafe { handle::<bf16>(frame, ffi::BF16, "bf16") }
}

unsafe extern "C" fn handle_f32(frame: *mut CallFrame) -> *mut c_void {
    // SAFETY: XLA's frame.
    unsafe { handle::<f32>(frame, ffi::F32, "f32") }
}

/// Checks `x [M, K]`, `w [N, K]`, `y [M, N]` of `dtype` and runs.
unsafe fn handle<T: Elem>(frame: *mut CallFrame, dtype: i32, name: &str) -> *mut c_void {
    // SAFETY: XLA passes a valid frame to a registered handler.
    unsafe {
        if ffi::answer_metadata(frame) || (*frame).stage != ffi::EXECUTE {
            return std::ptr::null_mut();
        }
        let (Some(x), Some(w), Some(y)) =
            (ffi::arg(frame, 0), ffi::arg(frame, 1), ffi::ret(frame, 0))
        else {
            return ffi::error(
                frame,
                "decode matmul: expected 2 buffer operands and 1 result",
            );
        };
        let (xd, wd, yd) = (x.dims(), w.dims(), y.dims());
        let ok = [x.dtype, w.dtype, y.dtype].iter().all(|&d| d == dtype)
            && xd.len() == 2
            && wd.len() == 2
            && yd.len() == 2
            && xd[1] == wd[1]
            && yd == [xd[0], wd[0]]
            && xd.iter().chain(wd).all(|&d| d >= 0);
        if !ok {
            return ffi::error(
                frame,
                &format!(
                    "decode matmul: expected {name} x [M, K], w [N, K] -> y [M, N]; got dtypes {} {} {} (XLA numbers), dims {xd:?} {wd:?} -> {yd:?}",
                    x.dtype, w.dtype, y.dtype
                ),
            );
        }
        let dims = (xd[0] as usize, xd[1] as usize, wd[0] as usize);
        let call = std::panic::catch_unwind(|| {
            run::<T>(x.data.cast(), w.data.cast(), y.data.cast(), dims);
        });
        match call {
            Ok(()) => std::ptr::null_mut(),
            Err(_) => ffi::error(frame, "decode matmul: the kernel panicked"),
        }
    }
}

unsafe extern "C" fn attend_bf16(frame: *mut CallFrame) -> *mut c_void {
    // SAFETY: XLA's frame.
    unsafe { attend::<bf16>(frame, ffi::BF16, "bf16") }
}

unsafe extern "C" fn attend_f32(frame: *mut CallFrame) -> *mut c_void {
    // SAFETY: XLA's frame.
    unsafe { attend::<f32>(frame, ffi::F32, "f32") }
}

/// Checks `q [B, H, D]`, `kt [B, KV, D, L]`, `v [B, KV, L, D]` of `dtype`,
/// `pad [B]`, `slot []` i32 and `o [B, H, D]`, and the slots, then runs.
unsafe fn attend<T: attention::Kernel>(
    frame: *mut CallFrame,
    dtype: i32,
    name: &str,
) -> *mut c_void {
    // SAFETY: XLA passes a valid frame to a registered handler.
    unsafe {
        if ffi::answer_metadata(frame) || (*frame).stage != ffi::EXECUTE {
            return std::ptr::null_mut();
        }
        let got = (
            ffi::arg(frame, 0),
            ffi::arg(frame, 1),
            ffi::arg(frame, 2),
            ffi::arg(frame, 3),
            ffi::arg(frame, 4),
            ffi::ret(frame, 0),
        );
        let (Some(q), Some(kt), Some(v), Some(pad), Some(slot), Some(o)) = got else {
            return ffi::error(
                frame,
                "decode attention: expected 5 buffer operands and 1 result",
            );
        };
        let (qd, kd, vd, pd, od) = (q.dims(), kt.dims(), v.dims(), pad.dims(), o.dims());
        let ok = [q.dtype, kt.dtype, v.dtype, o.dtype]
            .iter()
            .all(|&d| d == dtype)
            && pad.dtype == ffi::S32
            && slot.dtype == ffi::S32
            && qd.len() == 3
            && kd.len() == 4
            && slot.dims().is_empty()
            && od == qd
            && pd == [qd[0]]
            && kd[0] == qd[0]
            && kd[2] == qd[2]
            && kd[1] > 0
            && qd[1] % kd[1] == 0
            && vd == [kd[0], kd[1], kd[3], kd[2]]
            && qd.iter().chain(kd).all(|&d| d >= 0);
        if !ok {
            return ffi::error(
                frame,
                &format!(
                    "decode attention: expected {name} q [B, H, D], kt [B, KV, D, L], v [B, KV, L, D], i32 pad [B] and slot [] -> o [B, H, D]; got dims {qd:?} {kd:?} {vd:?} {pd:?} {:?} -> {od:?}",
                    slot.dims()
                ),
            );
        }
        let d = attention::Dims {
            batch: qd[0] as usize,
            heads: qd[1] as usize,
            kv_heads: kd[1] as usize,
            head_dim: qd[2] as usize,
            len: kd[3] as usize,
        };
        let pads = std::slice::from_raw_parts(pad.data.cast::<i32>(), d.batch);
        let at = *slot.data.cast::<i32>();
        if at < 0 || at as usize >= d.len || pads.iter().any(|&p| p < 0 || p > at) {
            return ffi::error(
                frame,
                &format!(
                    "decode attention: slot {at} outside the cache's {} slots or before a row's first slot {pads:?}",
                    d.len
                ),
            );
        }
        let call = std::panic::catch_unwind(|| {
            attention::run::<T>(
                q.data.cast(),
                kt.data.cast(),
                v.data.cast(),
                o.data.cast(),
                d,
                pads,
                at as usize,
            );
        });
        match call {
            Ok(()) => std::ptr::null_mut(),
            Err(_) => ffi::error(frame, "decode attention: the kernel panicked"),
        }
    }
}
