//! Device buffers and the host element types that move in and out of them.

use std::sync::Arc;

use half::{bf16, f16};

use crate::client::ClientInner;
use crate::plugin::{args, pjrt_call};
use crate::sys;
use crate::{Error, Result};

/// Element type of a device array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ElementType {
    /// Boolean (`i1` in StableHLO, one byte per element on the host).
    Pred,
    /// Signed 8-bit integer.
    S8,
    /// Signed 16-bit integer.
    S16,
    /// Signed 32-bit integer.
    S32,
    /// Signed 64-bit integer.
    S64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// bfloat16.
    BF16,
}

const TYPES: [(ElementType, sys::PJRT_Buffer_Type, usize); 13] = {
    use ElementType::*;
    type T = sys::PJRT_Buffer_Type;
    [
        (Pred, T::PJRT_Buffer_Type_PRED, 1),
        (S8, T::PJRT_Buffer_Type_S8, 1),
        (S16, T::PJRT_Buffer_Type_S16, 2),
        (S32, T::PJRT_Buffer_Type_S32, 4),
        (S64, T::PJRT_Buffer_Type_S64, 8),
        (U8, T::PJRT_Buffer_Type_U8, 1),
        (U16, T::PJRT_Buffer_Type_U16, 2),
        (U32, T::PJRT_Buffer_Type_U32, 4),
        (U64, T::PJRT_Buffer_Type_U64, 8),
        (F16, T::PJRT_Buffer_Type_F16, 2),
        (F32, T::PJRT_Buffer_Type_F32, 4),
        (F64, T::PJRT_Buffer_Type_F64, 8),
        (BF16, T::PJRT_Buffer_Type_BF16, 2),
    ]
};

impl ElementType {
    /// Bytes per element on the host.
    pub fn size_in_bytes(self) -> usize {
        TYPES.iter().find(|t| t.0 == self).map(|t| t.2).unwrap_or(0)
    }

    pub(crate) fn to_raw(self) -> sys::PJRT_Buffer_Type {
        TYPES
            .iter()
            .find(|t| t.0 == self)
            .map(|t| t.1)
            .unwrap_or(sys::PJRT_Buffer_Type::PJRT_Buffer_Type_INVALID)
    }

    pub(crate) fn from_raw(raw: sys::PJRT_Buffer_Type) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == raw).map(|t| t.0)
    }
}

/// A host type that maps to an [`ElementType`].
pub trait NativeType: Copy + 'static {
    /// The device element type.
    const TYPE: ElementType;
    /// The values as little-endian bytes, as the device expects them.
    fn as_bytes(data: &[Self]) -> &[u8];
    /// Values from little-endian bytes (length a multiple of the element size).
    fn from_bytes(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! native {
    ($t:ty, $e:ident, $n:literal, |$b:ident| $from:expr) => {
        impl NativeType for $t {
            const TYPE: ElementType = ElementType::$e;
            fn as_bytes(data: &[Self]) -> &[u8] {
                // SAFETY: plain numeric data (or `bool`, one byte 0/1) with no
                // padding; this crate targets little-endian hosts only.
                unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
            }
            fn from_bytes(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        // invariant: `chunks_exact($n)` yields slices of exactly $n bytes.
                        let $b: [u8; $n] = c.try_into().expect("chunk size");
                        $from
                    })
                    .collect()
            }
        }
    };
}
native!(f32, F32, 4, |b| f32::from_le_bytes(b));
native!(f64, F64, 8, |b| f64::from_le_bytes(b));
native!(bf16, BF16, 2, |b| bf16::from_bits(u16::from_le_bytes(b)));
native!(f16, F16, 2, |b| f16::from_bits(u16::from_le_bytes(b)));
native!(i8, S8, 1, |b| i8::from_le_bytes(b));
native!(i16, S16, 2, |b| i16::from_le_bytes(b));
native!(i32, S32, 4, |b| i32::from_le_bytes(b));
native!(i64, S64, 8, |b| i64::from_le_bytes(b));
native!(u8, U8, 1, |b| b[0]);
native!(u16, U16, 2, |b| u16::from_le_bytes(b));
native!(u32, U32, 4, |b| u32::from_le_bytes(b));
native!(u64, U64, 8, |b| u64::from_le_bytes(b));
native!(bool, Pred, 1, |b| b[0] != 0);

#[cfg(target_endian = "big")]
compile_error!("meshtrain-pjrt assumes a little-endian host");

/// An array on one device. Destroyed through the plugin when dropped.
pub struct Buffer {
    client: Arc<ClientInner>,
    pub(crate) raw: *mut sys::PJRT_Buffer,
    /// Element type and dims, read once from the plugin when wrapped.
    meta: Option<(ElementType, Vec<i64>)>,
}

// SAFETY: PJRT buffers are thread-safe handles.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut a = args!(PJRT_Buffer_Destroy_Args { buffer: self.raw });
        let _ = pjrt_call!(&self.client.plugin, PJRT_Buffer_Destroy, &mut a);
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("type", &self.element_type().ok())
            .field("dims", &self.dims().ok())
            .finish()
    }
}

impl Buffer {
    pub(crate) fn wrap(client: Arc<ClientInner>, raw: *mut sys::PJRT_Buffer) -> Buffer {
        let mut b = Buffer {
            client,
            raw,
            meta: None,
        };
        b.meta = b.query_type().ok().zip(b.query_dims().ok());
        b
    }

    /// Element type and dims as recorded at creation.
    pub(crate) fn meta(&self) -> Option<&(ElementType, Vec<i64>)> {
        self.meta.as_ref()
    }

    pub(crate) fn client(&self) -> &Arc<ClientInner> {
        &self.client
    }

    /// The element type.
    pub fn element_type(&self) -> Result<ElementType> {
        match &self.meta {
            Some((t, _)) => Ok(*t),
            None => self.query_type(),
        }
    }

    /// The dimensions.
    pub fn dims(&self) -> Result<Vec<i64>> {
        match &self.meta {
            Some((_, d)) => Ok(d.clone()),
            None => self.query_dims(),
        }
    }

    fn query_type(&self) -> Result<ElementType> {
        let mut a = args!(PJRT_Buffer_ElementType_Args { buffer: self.raw });
        pjrt_call!(&self.client.plugin, PJRT_Buffer_ElementType, &mut a)?;
        ElementType::from_raw(a.type_).ok_or_else(|| {
            Error::invalid(
                "reading a buffer",
                format!("unsupported element type {}", a.type_.0),
            )
        })
    }

    fn query_dims(&self) -> Result<Vec<i64>> {
        let mut a = args!(PJRT_Buffer_Dimensions_Args { buffer: self.raw });
        pjrt_call!(&self.client.plugin, PJRT_Buffer_Dimensions, &mut a)?;
        if a.dims.is_null() || a.num_dims == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the plugin hands out `num_dims` values at `dims`.
        Ok(unsafe { std::slice::from_raw_parts(a.dims, a.num_dims) }.to_vec())
    }

    /// Whether the buffer was deleted, e.g. donated to an execution.
    pub fn is_deleted(&self) -> Result<bool> {
        let mut a = args!(PJRT_Buffer_IsDeleted_Args { buffer: self.raw });
        pjrt_call!(&self.client.plugin, PJRT_Buffer_IsDeleted, &mut a)?;
        Ok(a.is_deleted)
    }

    /// Bytes the buffer occupies on the device.
    pub fn on_device_size(&self) -> Result<usize> {
        let mut a = args!(PJRT_Buffer_OnDeviceSizeInBytes_Args { buffer: self.raw });
        pjrt_call!(&self.client.plugin, PJRT_Buffer_OnDeviceSizeInBytes, &mut a)?;
        Ok(a.on_device_size_in_bytes)
    }

    /// A new buffer on this buffer's own device, in its own memory, holding
    /// the same values (`PJRT_Buffer_CopyToMemory`, or
    /// `PJRT_Buffer_CopyToDevice` where that fails). Returns at
    /// once: the runtime orders the copy after whatever computes this
    /// buffer and before a later program that donates it, so the copy can
    /// be read to the host while that program runs.
    pub fn copy_on_device(&self) -> Result<Buffer> {
        let plugin = &self.client.plugin;
        let mut m = args!(PJRT_Buffer_Memory_Args { buffer: self.raw });
        let by_memory = pjrt_call!(plugin, PJRT_Buffer_Memory, &mut m).and_then(|()| {
            let mut a = args!(PJRT_Buffer_CopyToMemory_Args {
                buffer: self.raw,
                dst_memory: m.memory,
            });
            pjrt_call!(plugin, PJRT_Buffer_CopyToMemory, &mut a).map(|()| a.dst_buffer)
        });
        let raw = match by_memory {
            Ok(raw) => raw,
            // A plugin without the memory API, or one that copies only
            // between devices that way, may copy through the device API.
            Err(first) => {
                let mut d = args!(PJRT_Buffer_Device_Args { buffer: self.raw });
                let mut a = args!(PJRT_Buffer_CopyToDevice_Args { buffer: self.raw });
                pjrt_call!(plugin, PJRT_Buffer_Device, &mut d)
                    .and_then(|()| {
                        a.dst_device = d.device;
                        pjrt_call!(plugin, PJRT_Buffer_CopyToDevice, &mut a)
                    })
                    .map_err(|_| first)?;
                a.dst_buffer
            }
        };
        Ok(Buffer::wrap(self.client.clone(), raw))
    }

    /// Copies the buffer to the host as raw little-endian bytes (waits for it).
    pub fn to_host_bytes(&self) -> Result<Vec<u8>> {
        let plugin = &self.client.plugin;
        let mut q = args!(PJRT_Buffer_ToHostBuffer_Args { src: self.raw });
        pjrt_call!(plugin, PJRT_Buffer_ToHostBuffer, &mut q)?;
        let mut out = vec![0u8; q.dst_size];
        let mut a = args!(PJRT_Buffer_ToHostBuffer_Args {
            src: self.raw,
            dst: out.as_mut_ptr().cast(),
            dst_size: out.len(),
        });
        pjrt_call!(plugin, PJRT_Buffer_ToHostBuffer, &mut a)?;
        plugin.await_event(a.event, "PJRT_Buffer_ToHostBuffer")?;
        Ok(out)
    }

    /// Copies the buffer to the host as `T`, which must match its element type.
    pub fn to_host<T: NativeType>(&self) -> Result<Vec<T>> {
        let ty = self.element_type()?;
        if ty != T::TYPE {
            return Err(Error::invalid(
                "device-to-host transfer",
                format!("buffer holds {ty:?}, asked for {:?}", T::TYPE),
            ));
        }
        Ok(T::from_bytes(&self.to_host_bytes()?))
    }
}
