//! Vector-Jacobian products: one `match` arm per op.

use std::collections::HashMap;

use crate::op::{BinaryOp, CmpDir, DotDims, Op, ReduceKind, UnaryOp};
use crate::ops::{inverse_perm, sorted_rank};
use crate::{Builder, Error, Result, Value};

/// Contributions `(operand, cotangent)` of node `out` (op `op`) given its
/// cotangent `g`. Forward values are read through `remap` (replayed remat
/// values). Integer and boolean operands get nothing.
pub(crate) fn vjp(
    b: &mut Builder,
    op: &Op,
    out: Value,
    g: Value,
    remap: &HashMap<Value, Value>,
) -> Result<Vec<(Value, Value)>> {
    let p = |v: Value| *remap.get(&v).unwrap_or(&v);
    let y = p(out);
    Ok(match op {
        Op::Parameter(_)
        | Op::Constant(_)
        | Op::Iota(_)
        | Op::Compare(..)
        | Op::Barrier(_)
        | Op::Scan(..)
        | Op::StopGradient(_) => {
            vec![]
        }
        Op::CustomCall(target, _) => {
            return Err(Error::Invalid {
                op: "grad",
                message: format!("custom call @{target} has no gradient"),
            });
        }
        Op::Unary(u, x) => unary(b, *u, p(*x), y, g)?
            .map(|c| vec![(*x, c)])
            .unwrap_or_default(),
        Op::Binary(k, x1, x2) => binary(b, *k, *x1, *x2, p(*x1), p(*x2), y, g)?,
        Op::Select(pred, t, f) => {
            let z = b.zeros_like(g);
            let pp = p(*pred);
            vec![(*t, b.select(pp, g, z)?), (*f, b.select(pp, z, g)?)]
        }
        Op::Convert(x) if b.is_float(*x) => {
            let dt = b.dtype(*x);
            vec![(*x, b.convert(g, dt)?)]
        }
        Op::Convert(_) | Op::Bitcast(_) => vec![],
        Op::Broadcast(x, dims) => {
            let xd = b.dims(*x).to_vec();
            let od = b.dims(g).to_vec();
            let mut axes: Vec<i64> = (0..od.len() as i64).filter(|d| !dims.contains(d)).collect();
            for (i, &d) in dims.iter().enumerate() {
                if xd[i] == 1 && od[d as usize] != 1 {
                    axes.push(d);
                }
            }
            let s = b.reduce(g, ReduceKind::Sum, &axes)?;
            vec![(*x, b.reshape(s, &xd)?)]
        }
        Op::Reshape(x) => {
            let xd = b.dims(*x).to_vec();
            vec![(*x, b.reshape(g, &xd)?)]
        }
        Op::Transpose(x, perm) => vec![(*x, b.transpose(g, &inverse_perm(perm))?)],
        Op::Slice(x, start, _, stride) => {
            let xd = b.dims(*x).to_vec();
            let n = b.dims(g).to_vec();
            let zero = b.scalar(0.0, b.dtype(g));
            let high: Vec<i64> = (0..xd.len())
                .map(|d| xd[d] - (start[d] + (n[d] - 1).max(0) * stride[d] + n[d].min(1)))
                .collect();
            let interior: Vec<i64> = stride.iter().map(|s| s - 1).collect();
            vec![(*x, b.pad(g, zero, start, &high, &interior)?)]
        }
        Op::DynamicSlice(x, starts, _) => {
            let z = b.zeros_like(*x);
            let st: Vec<Value> = starts.iter().map(|&s| p(s)).collect();
            vec![(*x, b.dynamic_update_slice(z, g, &st)?)]
        }
        Op::DynamicUpdateSlice(x, u, starts) => {
            let st: Vec<Value> = starts.iter().map(|&s| p(s)).collect();
            let zu = b.zeros_like(*u);
            let ud = b.dims(*u).to_vec();
            vec![
                (*x, b.dynamic_update_slice(g, zu, &st)?),
                (*u, b.dynamic_slice(g, &st, &ud)?),
            ]
        }
        Op::Concat(xs, dim) => {
            let mut off = 0;
            let mut out = Vec::with_capacity(xs.len());
            for &x in xs {
                let len = b.dims(x)[*dim as usize];
                out.push((x, b.slice_axis(g, *dim as usize, off, len)?));
                off += len;
            }
            out
        }
        Op::Pad(x, v, low, high, interior) => {
            let zero = b.scalar(0.0, b.dtype(g));
            let r = low.len();
            let lo_in: Vec<i64> = low.iter().map(|&l| (-l).max(0)).collect();
            let hi_in: Vec<i64> = high.iter().map(|&h| (-h).max(0)).collect();
            let g2 = b.pad(g, zero, &lo_in, &hi_in, &vec![0; r])?;
            let d2 = b.dims(g2).to_vec();
            let start: Vec<i64> = low.iter().map(|&l| l.max(0)).collect();
            let limit: Vec<i64> = (0..r).map(|d| d2[d] - high[d].max(0)).collect();
            let stride: Vec<i64> = interior.iter().map(|i| i + 1).collect();
            let gx = b.slice(g2, &start, &limit, &stride)?;
            let all: Vec<i64> = (0..r as i64).collect();
            let sg = b.reduce(g, ReduceKind::Sum, &all)?;
            let sx = b.reduce(gx, ReduceKind::Sum, &all)?;
            vec![(*x, gx), (*v, b.sub(sg, sx)?)]
        }
        Op::Dot(l, r, dims) => dot(b, *l, *r, p(*l), p(*r), dims, g)?,
        Op::Reduce(x, kind, axes) => {
            let xd = b.dims(*x).to_vec();
            let kept: Vec<i64> = (0..xd.len() as i64).filter(|d| !axes.contains(d)).collect();
            let gb = match kind {
                ReduceKind::Sum => b.broadcast_in_dim(g, &xd, &kept)?,
                ReduceKind::Max | ReduceKind::Min => {
                    // Ties share the cotangent equally (as JAX does).
                    let yb = b.broadcast_in_dim(y, &xd, &kept)?;
                    let hit = b.eq(p(*x), yb)?;
                    let mask = b.convert(hit, b.dtype(g))?;
                    let count = b.reduce(mask, ReduceKind::Sum, axes)?;
                    let share = b.div(g, count)?;
                    let sb = b.broadcast_in_dim(share, &xd, &kept)?;
                    b.mul(sb, mask)?
                }
            };
            vec![(*x, gb)]
        }
        Op::Gather(table, idx) => {
            let z = b.zeros_like(*table);
            vec![(*table, b.scatter_add_rows(z, p(*idx), g)?)]
        }
        Op::ScatterAdd(operand, idx, upd) => vec![(*operand, g), (*upd, b.take_rows(g, p(*idx))?)],
        Op::Project(node, i) => match &b.nodes[node.index()].op {
            Op::Barrier(xs) => vec![(xs[*i], g)],
            _ => vec![],
        },
        Op::Constraint(x, s) => {
            let s = s.clone();
            vec![(*x, b.sharding_constraint(g, &s)?)]
        }
    })
}

fn unary(b: &mut Builder, u: UnaryOp, x: Value, y: Value, g: Value) -> Result<Option<Value>> {
    let dt = b.dtype(x);
    if !dt.is_float() {
        return Ok(None);
    }
    let ty = b.ty(x).clone();
    let mut c = |v: f64| b.constant(v, ty.clone());
    let (k1, k05, kerf) = (c(1.0), c(-0.5), c(std::f64::consts::FRAC_2_SQRT_PI));
    let k_half = c(0.5);
    let d = match u {
        UnaryOp::Neg => return Ok(Some(b.neg(g)?)),
        UnaryOp::Floor | UnaryOp::Sign | UnaryOp::Not => return Ok(None),
        UnaryOp::Abs => b.sign(x)?,
        UnaryOp::Exp => y,
        UnaryOp::Log => return Ok(Some(b.div(g, x)?)),
        UnaryOp::Log1p => {
            let x1 = b.add(x, k1)?;
            return Ok(Some(b.div(g, x1)?));
        }
        UnaryOp::Tanh => {
            let y2 = b.mul(y, y)?;
            b.sub(k1, y2)?
        }
        UnaryOp::Rsqrt => {
            let y2 = b.mul(y, y)?;
            let y3 = b.mul(y2, y)?;
            b.mul(y3, k05)?
        }
        UnaryOp::Sqrt => {
            let gh = b.mul(g, k_half)?;
            return Ok(Some(b.div(gh, y)?));
        }
        UnaryOp::Sin => b.cos(x)?,
        UnaryOp::Cos => {
            let s = b.sin(x)?;
            b.neg(s)?
        }
        UnaryOp::Erf => {
            let x2 = b.mul(x, x)?;
            let nx2 = b.neg(x2)?;
            let e = b.exp(nx2)?;
            b.mul(e, kerf)?
        }
        UnaryOp::Logistic => {
            let one_m = b.sub(k1, y)?;
            b.mul(y, one_m)?
        }
    };
    Ok(Some(b.mul(g, d)?))
}

#[allow(clippy::too_many_arguments)]
fn binary(
    b: &mut Builder,
    k: BinaryOp,
    o1: Value,
    o2: Value,
    x1: Value,
    x2: Value,
    y: Value,
    g: Value,
) -> Result<Vec<(Value, Value)>> {
    if !b.is_float(x1) {
        return Ok(vec![]);
    }
    Ok(match k {
        BinaryOp::Add => vec![(o1, g), (o2, g)],
        BinaryOp::Sub => vec![(o1, g), (o2, b.neg(g)?)],
        BinaryOp::Mul => vec![(o1, b.mul(g, x2)?), (o2, b.mul(g, x1)?)],
        BinaryOp::Div => {
            let ga = b.div(g, x2)?;
            let t = b.mul(ga, y)?;
            vec![(o1, ga), (o2, b.neg(t)?)]
        }
        BinaryOp::Max | BinaryOp::Min => {
            // The winner takes g; ties split it in half (as JAX does).
            let dir = if k == BinaryOp::Max {
                CmpDir::Gt
            } else {
                CmpDir::Lt
            };
            let w1 = b.compare(dir, x1, x2)?;
            let w2 = b.compare(dir, x2, x1)?;
            let tie = b.eq(x1, x2)?;
            let half = b.constant(0.5, b.ty(g).clone());
            let gh = b.mul(g, half)?;
            let z = b.zeros_like(g);
            let t1 = b.select(tie, gh, z)?;
            let t2 = b.select(w1, g, t1)?;
            let t3 = b.select(w2, g, t1)?;
            vec![(o1, t2), (o2, t3)]
        }
        BinaryOp::Pow => {
            let one = b.constant(1.0, b.ty(g).clone());
            let bm1 = b.sub(x2, one)?;
            let pw = b.pow(x1, bm1)?;
            let d1 = b.mul(pw, x2)?;
            let zero = b.zeros_like(g);
            let is0 = b.eq(x1, zero)?;
            let lg = b.log(x1)?;
            let lg = b.select(is0, zero, lg)?;
            let d2 = b.mul(y, lg)?;
            vec![(o1, b.mul(g, d1)?), (o2, b.mul(g, d2)?)]
        }
        BinaryOp::Rem => {
            // rem = a - trunc(a/b) * b, so d/db = -trunc(a/b) = -(a - rem)/b.
            let t = b.sub(x1, y)?;
            let q = b.div(t, x2)?;
            let gq = b.mul(g, q)?;
            vec![(o1, g), (o2, b.neg(gq)?)]
        }
        BinaryOp::And
        | BinaryOp::Or
        | BinaryOp::Xor
        | BinaryOp::ShiftLeft
        | BinaryOp::ShiftRightLogical => vec![],
    })
}

/// Cotangents of `dot_general` (result dims: batch, lhs free, rhs free).
fn dot(
    b: &mut Builder,
    ol: Value,
    or: Value,
    l: Value,
    r: Value,
    d: &DotDims,
    g: Value,
) -> Result<Vec<(Value, Value)>> {
    if !b.is_float(l) {
        return Ok(vec![]);
    }
    let g = b.convert(g, b.dtype(l))?;
    let (rl, rr) = (b.rank(l), b.rank(r));
    let nb = d.lhs_batch.len() as i64;
    let lfree = crate::ops::free_dims(rl, &d.lhs_batch, &d.lhs_contract);
    let rfree = crate::ops::free_dims(rr, &d.rhs_batch, &d.rhs_contract);
    let (nl, nr) = (lfree.len() as i64, rfree.len() as i64);
    let gb: Vec<i64> = (0..nb).collect();
    // d lhs: contract g's rhs-free dims with rhs's free dims -> [batch, lfree, rhs contract (sorted)].
    let gl = b.dot_general(
        g,
        r,
        DotDims {
            lhs_batch: gb.clone(),
            rhs_batch: d.rhs_batch.clone(),
            lhs_contract: (nb + nl..nb + nl + nr).collect(),
            rhs_contract: rfree.clone(),
        },
    )?;
    let mut perm = vec![0i64; rl];
    for (i, &bd) in d.lhs_batch.iter().enumerate() {
        perm[bd as usize] = i as i64;
    }
    for (j, &fd) in lfree.iter().enumerate() {
        perm[fd as usize] = nb + j as i64;
    }
    for (k, &cd) in d.lhs_contract.iter().enumerate() {
        perm[cd as usize] = nb + nl + sorted_rank(&d.rhs_contract, d.rhs_contract[k]);
    }
    let dl = b.transpose(gl, &perm)?;
    // d rhs: contract g's lhs-free dims with lhs's free dims -> [batch, rfree, lhs contract (sorted)].
    let gr = b.dot_general(
        g,
        l,
        DotDims {
            lhs_batch: gb,
            rhs_batch: d.lhs_batch.clone(),
            lhs_contract: (nb..nb + nl).collect(),
            rhs_contract: lfree,
        },
    )?;
    let mut perm = vec![0i64; rr];
    for (i, &bd) in d.rhs_batch.iter().enumerate() {
        perm[bd as usize] = i as i64;
    }
    for (j, &fd) in rfree.iter().enumerate() {
        perm[fd as usize] = nb + j as i64;
    }
    for (k, &cd) in d.rhs_contract.iter().enumerate() {
        perm[cd as usize] = nb + nr + sorted_rank(&d.lhs_contract, d.lhs_contract[k]);
    }
    let dr = b.transpose(gr, &perm)?;
    Ok(vec![(ol, dl), (or, dr)])
}
