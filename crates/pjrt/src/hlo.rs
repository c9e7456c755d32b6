//! A small reader for the optimized program that plugins return
//! (`hlo_with_config`: a serialized `xla.HloModuleProtoWithConfig`): the
//! entry parameters' per-device shapes and every instruction's opcode and
//! shape, enough to check execute arguments and to count collectives.
//!
//! Field numbers follow `xla/service/hlo.proto` and `xla/xla_data.proto`.

use crate::buffer::ElementType;
use crate::{Error, Result};

/// The shape of one array (or a tuple of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HloShape {
    /// Element type; `None` for tuples and types this crate does not map.
    pub element_type: Option<ElementType>,
    /// XLA `PrimitiveType` number (13 = tuple).
    pub primitive_type: i64,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Tuple elements.
    pub tuple: Vec<HloShape>,
}

impl HloShape {
    /// Bytes of the array (summed over tuple elements).
    pub fn size_in_bytes(&self) -> u64 {
        if !self.tuple.is_empty() {
            return self.tuple.iter().map(HloShape::size_in_bytes).sum();
        }
        let elems: i64 = self.dims.iter().product();
        elems.max(0) as u64 * self.element_type.map_or(0, |t| t.size_in_bytes() as u64)
    }
}

/// One instruction of the optimized module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HloInstruction {
    /// Instruction name.
    pub name: String,
    /// Opcode (`all-gather`, `fusion`, `dot`, ...).
    pub opcode: String,
    /// Result shape.
    pub shape: HloShape,
    /// Computation it belongs to.
    pub computation: String,
}

/// What the reader extracts from an optimized module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HloSummary {
    /// Module name.
    pub name: String,
    /// Entry parameters as each device sees them.
    pub parameters: Vec<HloShape>,
    /// Every instruction of every computation.
    pub instructions: Vec<HloInstruction>,
}

/// Parses a serialized `HloModuleProtoWithConfig` (or a bare `HloModuleProto`
/// when `with_config` is false).
pub fn parse_module(bytes: &[u8], with_config: bool) -> Result<HloSummary> {
    let module = if with_config {
        fields(bytes)?
            .into_iter()
            .find_map(|f| match f {
                (1, Field::Bytes(b)) => Some(b),
                _ => None,
            })
            .ok_or_else(|| bad("no hlo_module in HloModuleProtoWithConfig"))?
    } else {
        bytes
    };
    let mut s = HloSummary::default();
    for (num, f) in fields(module)? {
        match (num, f) {
            (1, Field::Bytes(b)) => s.name = String::from_utf8_lossy(b).into_owned(),
            (3, Field::Bytes(b)) => computation(b, &mut s.instructions)?,
            (4, Field::Bytes(b)) => {
                // host_program_shape: ProgramShapeProto { parameters = 1 }
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(p)) = (n, f) {
                        s.parameters.push(shape(p)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

fn computation(bytes: &[u8], out: &mut Vec<HloInstruction>) -> Result<()> {
    let fs = fields(bytes)?;
    let name = fs
        .iter()
        .find_map(|(n, f)| match (n, f) {
            (1, Field::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    for (n, f) in fs {
        if let (2, Field::Bytes(b)) = (n, f) {
            let mut inst = HloInstruction {
                name: String::new(),
                opcode: String::new(),
                shape: HloShape {
                    element_type: None,
                    primitive_type: 0,
                    dims: Vec::new(),
                    tuple: Vec::new(),
                },
                computation: name.clone(),
            };
            for (n, f) in fields(b)? {
                match (n, f) {
                    (1, Field::Bytes(b)) => inst.name = String::from_utf8_lossy(b).into_owned(),
                    (2, Field::Bytes(b)) => inst.opcode = String::from_utf8_lossy(b).into_owned(),
                    (3, Field::Bytes(b)) => inst.shape = shape(b)?,
                    _ => {}
                }
            }
            out.push(inst);
        }
    }
    Ok(())
}

fn shape(bytes: &[u8]) -> Result<HloShape> {
    let mut s = HloShape {
        element_type: None,
        primitive_type: 0,
        dims: Vec::new(),
        tuple: Vec::new(),
    };
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (2, Field::Varint(v)) => s.primitive_type = v as i64,
            (3, Field::Varint(v)) => s.dims.push(v as i64),
            (3, Field::Bytes(b)) => {
                let mut b = b;
                while !b.is_empty() {
                    s.dims.push(varint(&mut b)? as i64);
                }
            }
            (4, Field::Bytes(b)) => s.tuple.push(shape(b)?),
            _ => {}
        }
    }
    s.element_type = primitive(s.primitive_type);
    Ok(s)
}

/// XLA `PrimitiveType` numbers (xla_data.proto) to element types.
fn primitive(p: i64) -> Option<ElementType> {
    use ElementType::*;
    Some(match p {
        1 => Pred,
        2 => S8,
        3 => S16,
        4 => S32,
        5 => S64,
        6 => U8,
        7 => U16,
        8 => U32,
        9 => U64,
        10 => F16,
        11 => F32,
        12 => F64,
        16 => BF16,
        _ => return None,
    })
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn bad(reason: &str) -> Error {
    Error::invalid("reading the optimized HLO", reason.to_string())
}

fn varint(b: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or_else(|| bad("truncated varint"))?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

fn fields(mut b: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if b.len() < n {
                    return Err(bad("truncated fixed field"));
                }
                b = &b[n..];
                Field::Fixed
            }
            2 => {
                let n = varint(&mut b)? as usize;
                if b.len() < n {
                    return Err(bad("truncated length-delimited field"));
                }
                let (v, rest) = b.split_at(n);
                b = rest;
                Field::Bytes(v)
            }
            w => return Err(bad(&format!("unsupported wire type {w}"))),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}
