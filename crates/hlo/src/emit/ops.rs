//! One StableHLO op per graph node.

use std::fmt::Write;

use super::Emitter;
use crate::op::{Literal, Op, ReduceKind, UnaryOp};
use crate::{DType, TensorType, Value};

impl Emitter<'_> {
    pub(super) fn node(&mut self, i: usize) {
        let b = self.b;
        let node = &b.nodes[i];
        let n = |v: &Value| format!("%{}", self.names[v.index()]);
        let t = |v: &Value| b.ty(*v).to_string();
        let ty = node.ty.to_string();
        let list = |xs: &[i64]| {
            xs.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let op_text = match &node.op {
            Op::Parameter(_) | Op::Project(..) | Op::StopGradient(_) => {
                unreachable!("handled by the caller")
            }
            Op::Constant(lit) => {
                self.consts
                    .insert((*lit, node.ty.clone()), self.names[i].clone());
                format!(
                    "stablehlo.constant dense<{}> : {ty}",
                    literal_text(*lit, node.ty.dtype)
                )
            }
            Op::Iota(d) => format!("stablehlo.iota dim = {d} : {ty}"),
            Op::Unary(UnaryOp::Erf, x) => format!("\"chlo.erf\"({}) : ({}) -> {ty}", n(x), t(x)),
            Op::Unary(u, x) => format!("stablehlo.{} {} : {ty}", u.name(), n(x)),
            Op::Binary(k, x, y) => format!("stablehlo.{} {}, {} : {ty}", k.name(), n(x), n(y)),
            Op::Compare(d, x, y) => {
                let dt = b.dtype(*x);
                let kind = if dt.is_float() {
                    "FLOAT"
                } else if dt.is_unsigned() || dt == DType::Bool {
                    "UNSIGNED"
                } else {
                    "SIGNED"
                };
                format!(
                    "stablehlo.compare {}, {}, {}, {kind} : ({}, {}) -> {ty}",
                    d.name(),
                    n(x),
                    n(y),
                    t(x),
                    t(y)
                )
            }
            Op::Select(c, x, y) => format!(
                "stablehlo.select {}, {}, {} : {}, {ty}",
                n(c),
                n(x),
                n(y),
                t(c)
            ),
            Op::Convert(x) => format!("stablehlo.convert {} : ({}) -> {ty}", n(x), t(x)),
            Op::Bitcast(x) => format!("stablehlo.bitcast_convert {} : ({}) -> {ty}", n(x), t(x)),
            Op::Broadcast(x, dims) => {
                format!(
                    "stablehlo.broadcast_in_dim {}, dims = [{}] : ({}) -> {ty}",
                    n(x),
                    list(dims),
                    t(x)
                )
            }
            Op::Reshape(x) => format!("stablehlo.reshape {} : ({}) -> {ty}", n(x), t(x)),
            Op::Transpose(x, perm) => format!(
                "stablehlo.transpose {}, dims = [{}] : ({}) -> {ty}",
                n(x),
                list(perm),
                t(x)
            ),
            Op::Slice(x, st, li, sr) => {
                let r: Vec<String> = (0..st.len())
                    .map(|d| {
                        if sr[d] == 1 {
                            format!("{}:{}", st[d], li[d])
                        } else {
                            format!("{}:{}:{}", st[d], li[d], sr[d])
                        }
                    })
                    .collect();
                format!(
                    "stablehlo.slice {} [{}] : ({}) -> {ty}",
                    n(x),
                    r.join(", "),
                    t(x)
                )
            }
            Op::DynamicSlice(x, starts, sizes) => {
                let s: Vec<String> = starts.iter().map(n).collect();
                let st: Vec<String> = std::iter::once(x).chain(starts).map(t).collect();
                format!(
                    "stablehlo.dynamic_slice {}, {}, sizes = [{}] : ({}) -> {ty}",
                    n(x),
                    s.join(", "),
                    list(sizes),
                    st.join(", ")
                )
            }
            Op::DynamicUpdateSlice(x, u, starts) => {
                let s: Vec<String> = [x, u].into_iter().chain(starts).map(n).collect();
                let st: Vec<String> = [x, u].into_iter().chain(starts).map(t).collect();
                format!(
                    "stablehlo.dynamic_update_slice {} : ({}) -> {ty}",
                    s.join(", "),
                    st.join(", ")
                )
            }
            Op::Concat(xs, d) => {
                let s: Vec<String> = xs.iter().map(n).collect();
                let st: Vec<String> = xs.iter().map(t).collect();
                format!(
                    "stablehlo.concatenate {}, dim = {d} : ({}) -> {ty}",
                    s.join(", "),
                    st.join(", ")
                )
            }
            Op::Pad(x, v, lo, hi, int) => format!(
                "stablehlo.pad {}, {}, low = [{}], high = [{}], interior = [{}] : ({}, {}) -> {ty}",
                n(x),
                n(v),
                list(lo),
                list(hi),
                list(int),
                t(x),
                t(v)
            ),
            Op::Dot(l, r, d) => {
                let batch = if d.lhs_batch.is_empty() {
                    String::new()
                } else {
                    format!(
                        "batching_dims = [{}] x [{}], ",
                        list(&d.lhs_batch),
                        list(&d.rhs_batch)
                    )
                };
                let precision = if self.highest && b.ty(*l).dtype == DType::F32 {
                    ", precision = [HIGHEST, HIGHEST]"
                } else {
                    ""
                };
                format!(
                    "stablehlo.dot_general {}, {}, {batch}contracting_dims = [{}] x [{}]{precision} : ({}, {}) -> {ty}",
                    n(l),
                    n(r),
                    list(&d.lhs_contract),
                    list(&d.rhs_contract),
                    t(l),
                    t(r)
                )
            }
            Op::Reduce(x, kind, axes) => {
                let (x, axes, kind) = (*x, axes.clone(), *kind);
                let dt = node.ty.dtype;
                let (init, body) = reduce_init(kind, dt);
                let init_name = self.const_name(init, TensorType::scalar(dt));
                let tx = b.ty(x).to_string();
                format!(
                    "stablehlo.reduce(%{} init: %{init_name}) applies stablehlo.{body} across dimensions = [{}] : ({tx}, tensor<{dt}>) -> {ty}",
                    self.names[x.index()],
                    list(&axes),
                )
            }
            Op::Gather(tab, idx) => {
                let ri = b.rank(*idx) as i64;
                let rt = b.rank(*tab) as i64;
                let offset: Vec<i64> = (ri..ri + rt - 1).collect();
                let offset = if offset.is_empty() {
                    String::new()
                } else {
                    format!("offset_dims = [{}], ", list(&offset))
                };
                let mut sizes = b.dims(*tab).to_vec();
                sizes[0] = 1;
                format!(
                    "\"stablehlo.gather\"({}, {}) <{{dimension_numbers = #stablehlo.gather<{offset}collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = {ri}>, indices_are_sorted = false, slice_sizes = array<i64: {}>}}> : ({}, {}) -> {ty}",
                    n(tab),
                    n(idx),
                    list(&sizes),
                    t(tab),
                    t(idx)
                )
            }
            Op::ScatterAdd(o, idx, u) => {
                let ri = b.rank(*idx) as i64;
                let ro = b.rank(*o) as i64;
                let win: Vec<i64> = (ri..ri + ro - 1).collect();
                let win = if win.is_empty() {
                    String::new()
                } else {
                    format!("update_window_dims = [{}], ", list(&win))
                };
                let st = format!("tensor<{}>", node.ty.dtype);
                format!(
                    "\"stablehlo.scatter\"({}, {}, {}) <{{indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<{win}inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = {ri}>, unique_indices = false}}> ({{\n    ^bb0(%sa{i}: {st}, %sb{i}: {st}):\n      %ss{i} = stablehlo.add %sa{i}, %sb{i} : {st}\n      stablehlo.return %ss{i} : {st}\n    }}) : ({}, {}, {}) -> {ty}",
                    n(o),
                    n(idx),
                    n(u),
                    t(o),
                    t(idx),
                    t(u)
                )
            }
            Op::Barrier(xs) => {
                let s: Vec<String> = xs.iter().map(n).collect();
                let st: Vec<String> = xs.iter().map(t).collect();
                let head = if xs.len() > 1 {
                    format!("{}:{}", self.names[i], xs.len())
                } else {
                    self.names[i].clone()
                };
                let _ = write!(
                    self.out,
                    "{}%{head} = stablehlo.optimization_barrier {} : {}",
                    self.indent,
                    s.join(", "),
                    st.join(", ")
                );
                return;
            }
            Op::Scan(body, inputs) => {
                let (body, inputs) = (body.0.clone(), inputs.clone());
                self.scan(i, &body, &inputs);
                return;
            }
            Op::Constraint(x, s) => format!("sdy.sharding_constraint {} {s} : {ty}", n(x)),
            Op::CustomCall(target, xs) => {
                let layout = |v: &TensorType| {
                    let r = v.dims.len() as i64;
                    let minor: Vec<i64> = (0..r).rev().collect();
                    format!("dense<[{}]> : tensor<{r}xindex>", list(&minor))
                };
                let names: Vec<String> = xs.iter().map(n).collect();
                let types: Vec<String> = xs.iter().map(t).collect();
                let ins: Vec<String> = xs.iter().map(|x| layout(b.ty(*x))).collect();
                format!(
                    "stablehlo.custom_call @{target}({}) {{api_version = 4 : i32, backend_config = {{}}, operand_layouts = [{}], result_layouts = [{}]}} : ({}) -> {ty}",
                    names.join(", "),
                    ins.join(", "),
                    layout(&node.ty),
                    types.join(", ")
                )
            }
        };
        let _ = write!(self.out, "{}%{} = {op_text}", self.indent, self.names[i]);
    }
}
/// The reduction's initial value and body op.
fn reduce_init(kind: ReduceKind, dt: DType) -> (Literal, &'static str) {
    let (lo, hi) = match dt {
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::I64 => (i64::MIN, i64::MAX),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U32 => (0, u32::MAX as i64),
        _ => (0, 0),
    };
    match (kind, dt) {
        (ReduceKind::Sum, d) if d.is_float() => (Literal::Float(0f64.to_bits()), "add"),
        (ReduceKind::Sum, _) => (Literal::Int(0), "add"),
        (ReduceKind::Max, DType::Bool) => (Literal::Bool(false), "or"),
        (ReduceKind::Min, DType::Bool) => (Literal::Bool(true), "and"),
        (ReduceKind::Max, d) if d.is_float() => {
            (Literal::Float(f64::NEG_INFINITY.to_bits()), "maximum")
        }
        (ReduceKind::Min, d) if d.is_float() => {
            (Literal::Float(f64::INFINITY.to_bits()), "minimum")
        }
        (ReduceKind::Max, _) => (Literal::Int(lo), "maximum"),
        (ReduceKind::Min, _) => (Literal::Int(hi), "minimum"),
    }
}

/// The text of one splat element: exact decimals where they round-trip
/// plainly (`0.5`), otherwise the element's bits in hex (`0xFF800000`).
pub(crate) fn literal_text(lit: Literal, dt: DType) -> String {
    let plain = |s: &str| {
        s.contains('.')
            && s.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    };
    match lit {
        Literal::Bool(v) => v.to_string(),
        Literal::Int(v) => v.to_string(),
        Literal::Float(bits) => {
            let v = f64::from_bits(bits);
            match dt {
                DType::F32 => {
                    let f = v as f32;
                    let s = format!("{f:?}");
                    if plain(&s) {
                        s
                    } else {
                        format!("0x{:08X}", f.to_bits())
                    }
                }
                DType::F64 => {
                    let s = format!("{v:?}");
                    if plain(&s) {
                        s
                    } else {
                        format!("0x{:016X}", v.to_bits())
                    }
                }
                DType::BF16 => format!("0x{:04X}", half::bf16::from_f64(v).to_bits()),
                DType::F16 => format!("0x{:04X}", half::f16::from_f64(v).to_bits()),
                _ => (v as i64).to_string(),
            }
        }
    }
}
