//! A small reader for the optimized program that plugins return
//! (`hlo_with_config`: a serialized `xla.HloModuleProtoWithConfig`): the
//! entry parameters' per-device shapes, every instruction's opcode and
//! shape, and how many times each runs per execution (loop trip counts
//! multiplied through the call graph), enough to check execute arguments and
//! to count collectives per step.
//!
//! Field numbers follow `xla/service/hlo.proto` and `xla/xla_data.proto`;
//! the trip count annotation is `xla.WhileLoopBackendConfig` (JSON text in
//! the `backend_config` bytes).

mod loops;

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
    /// Ids of the computations it calls (a `while`: body, then condition).
    pub called_computations: Vec<i64>,
    /// For a `while`: its trip count, from XLA's `known_trip_count`
    /// annotation or, failing that, from the condition's compare of the
    /// induction variable against a constant; `None` when neither says.
    pub trip_count: Option<u64>,
    /// How many times one execution of the module runs it: the product of
    /// the trip counts of the loops around it, summed over call sites (0 for
    /// a computation nothing calls).
    pub executions: u64,
    /// True when a loop around it has no known trip count (counted as one
    /// iteration), so `executions` is only a lower bound.
    pub executions_lower_bound: bool,
}

/// One computation of the optimized module and how often it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HloComputation {
    /// Computation id.
    pub id: i64,
    /// Computation name.
    pub name: String,
    /// Runs per execution of the module (see [`HloInstruction::executions`]).
    pub executions: u64,
    /// True when `executions` is only a lower bound.
    pub executions_lower_bound: bool,
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
    /// Every computation, in the module's order.
    pub computations: Vec<HloComputation>,
    /// The entry computation's name (empty for a module without one).
    pub entry: String,
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
    let mut comps = Vec::new();
    let (mut entry_name, mut entry_id) = (None, None);
    for (num, f) in fields(module)? {
        match (num, f) {
            (1, Field::Bytes(b)) => s.name = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) => entry_name = Some(String::from_utf8_lossy(b).into_owned()),
            (6, Field::Varint(v)) => entry_id = Some(v as i64),
            (3, Field::Bytes(b)) => comps.push(computation(b)?),
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
    // The entry: by name, else by id, else the last computation (callees
    // come before their callers).
    let entry = entry_name
        .and_then(|n| comps.iter().position(|c| c.name == n))
        .or_else(|| entry_id.and_then(|id| comps.iter().position(|c| c.id == id)))
        .or(comps.len().checked_sub(1));
    if let Some(e) = entry {
        s.entry = comps[e].name.clone();
    }
    let counts = loops::executions(&comps, entry);
    for (c, &(executions, lower)) in comps.iter().zip(&counts.computations) {
        s.computations.push(HloComputation {
            id: c.id,
            name: c.name.clone(),
            executions,
            executions_lower_bound: lower,
        });
        for i in &c.insts {
            s.instructions.push(HloInstruction {
                name: i.name.clone(),
                opcode: i.opcode.clone(),
                shape: i.shape.clone(),
                computation: c.name.clone(),
                called_computations: i.called.clone(),
                trip_count: counts.trip_counts.get(&(c.id, i.id)).copied(),
                executions,
                executions_lower_bound: lower,
            });
        }
    }
    Ok(s)
}

/// An instruction as read, with what the loop analysis needs.
pub(crate) struct RawInst<'a> {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) opcode: String,
    pub(crate) shape: HloShape,
    pub(crate) operands: Vec<i64>,
    pub(crate) called: Vec<i64>,
    pub(crate) backend_config: &'a [u8],
    /// The value of a one-element integer literal.
    pub(crate) literal: Option<i64>,
    pub(crate) parameter_number: i64,
    pub(crate) tuple_index: i64,
    pub(crate) direction: String,
}

/// A computation as read.
pub(crate) struct RawComp<'a> {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) root: Option<i64>,
    pub(crate) insts: Vec<RawInst<'a>>,
}

fn computation(bytes: &[u8]) -> Result<RawComp<'_>> {
    let mut c = RawComp {
        id: 0,
        name: String::new(),
        root: None,
        insts: Vec::new(),
    };
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => c.name = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) => c.insts.push(instruction(b)?),
            (5, Field::Varint(v)) => c.id = v as i64,
            (6, Field::Varint(v)) => c.root = Some(v as i64),
            _ => {}
        }
    }
    Ok(c)
}

fn instruction(bytes: &[u8]) -> Result<RawInst<'_>> {
    let mut i = RawInst {
        id: 0,
        name: String::new(),
        opcode: String::new(),
        shape: HloShape {
            element_type: None,
            primitive_type: 0,
            dims: Vec::new(),
            tuple: Vec::new(),
        },
        operands: Vec::new(),
        called: Vec::new(),
        backend_config: &[],
        literal: None,
        parameter_number: 0,
        tuple_index: 0,
        direction: String::new(),
    };
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => i.name = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) => i.opcode = String::from_utf8_lossy(b).into_owned(),
            (3, Field::Bytes(b)) => i.shape = shape(b)?,
            (8, Field::Bytes(b)) => i.literal = scalar_literal(b)?,
            (9, Field::Varint(v)) => i.parameter_number = v as i64,
            (13, Field::Varint(v)) => i.tuple_index = v as i64,
            (35, Field::Varint(v)) => i.id = v as i64,
            (36, f) => push_ints(f, &mut i.operands)?,
            (38, f) => push_ints(f, &mut i.called)?,
            (43, Field::Bytes(b)) => i.backend_config = b,
            (63, Field::Bytes(b)) => i.direction = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    Ok(i)
}

/// A repeated int64 field, packed or not.
fn push_ints(f: Field<'_>, out: &mut Vec<i64>) -> Result<()> {
    match f {
        Field::Varint(v) => out.push(v as i64),
        Field::Bytes(mut b) => {
            while !b.is_empty() {
                out.push(varint(&mut b)? as i64);
            }
        }
        Field::Fixed => {}
    }
    Ok(())
}

/// The value of a `LiteralProto` holding exactly one integer (s32s = 4,
/// s64s = 5, u32s = 6, u64s = 7); `None` for anything else.
fn scalar_literal(bytes: &[u8]) -> Result<Option<i64>> {
    let mut values = Vec::new();
    for (n, f) in fields(bytes)? {
        match n {
            4..=7 => push_ints(f, &mut values)?,
            2 | 3 | 8..=21 => return Ok(None),
            _ => {}
        }
    }
    Ok(match values[..] {
        [v] => Some(v),
        _ => None,
    })
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

#[cfg(test)]
mod tests;
