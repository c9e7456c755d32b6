//! A host reference interpreter: evaluates a graph in `f64`, rounding each
//! result to its dtype. It gives finite-difference gradient checks without a
//! device and host-computed references for device tests. Slow; small shapes.

mod scalar;

pub use scalar::erf;
pub(crate) use scalar::round_to;
use scalar::{binary, bitcast, compare, unary};

use crate::op::{Op, ReduceKind};
use crate::{Builder, Error, Program, Result, Value};

/// A dense host tensor: dimensions and row-major `f64` data (integers and
/// booleans too; booleans are 0 or 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Row-major elements.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor from dimensions and data (lengths must agree).
    pub fn new(dims: impl Into<Vec<i64>>, data: Vec<f64>) -> Tensor {
        let dims = dims.into();
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            data.len(),
            "Tensor::new: {dims:?}"
        );
        Tensor { dims, data }
    }

    /// A scalar.
    pub fn scalar(v: f64) -> Tensor {
        Tensor {
            dims: vec![],
            data: vec![v],
        }
    }
}

fn strides(dims: &[i64]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * dims[d + 1] as usize;
    }
    s
}

fn unravel(mut flat: usize, dims: &[i64], idx: &mut [i64]) {
    for d in (0..dims.len()).rev() {
        let n = dims[d] as usize;
        idx[d] = (flat % n.max(1)) as i64;
        flat /= n.max(1);
    }
}

fn ravel(idx: &[i64], st: &[usize]) -> usize {
    idx.iter().zip(st).map(|(&i, &s)| i as usize * s).sum()
}

impl Program {
    /// Evaluates the program on the host (see the module docs).
    pub fn evaluate(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.b.evaluate(inputs, &self.outputs)
    }
}

impl Builder {
    /// Evaluates `outputs` on the host given one tensor per parameter.
    pub fn evaluate(&self, inputs: &[Tensor], outputs: &[Value]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.params.len() {
            return Err(Error::Invalid {
                op: "evaluate",
                message: format!(
                    "{} inputs for {} parameters",
                    inputs.len(),
                    self.params.len()
                ),
            });
        }
        let n = outputs.iter().map(|v| v.index() + 1).max().unwrap_or(0);
        let mut need = vec![false; n];
        for o in outputs {
            need[o.index()] = true;
        }
        for i in (0..n).rev() {
            if need[i] {
                for o in self.nodes[i].op.operands() {
                    need[o.index()] = true;
                }
            }
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; n];
        let mut multi: std::collections::HashMap<usize, Vec<Tensor>> =
            std::collections::HashMap::new();
        for i in 0..n {
            if !need[i] || matches!(self.nodes[i].op, Op::Barrier(_)) {
                continue;
            }
            if let Op::Scan(body, ins) = &self.nodes[i].op {
                let args: Vec<&Tensor> = ins
                    .iter()
                    // invariant: nodes are evaluated in order and operands precede their users.
                    .map(|x| vals[x.index()].as_ref().expect("evaluated"))
                    .collect();
                multi.insert(i, eval_scan(&body.0, &args)?);
                continue;
            }
            if let Op::Project(parent, k) = self.nodes[i].op
                && let Some(results) = multi.get(&parent.index())
            {
                vals[i] = Some(results[k].clone());
                continue;
            }
            let t = self.eval_node(i, &vals, inputs)?;
            vals[i] = Some(t);
        }
        Ok(outputs
            .iter()
            // invariant: every node was evaluated by the loop above.
            .map(|o| vals[o.index()].clone().expect("evaluated"))
            .collect())
    }

    fn eval_node(&self, i: usize, vals: &[Option<Tensor>], inputs: &[Tensor]) -> Result<Tensor> {
        let node = &self.nodes[i];
        let dims = node.ty.dims.clone();
        let dt = node.ty.dtype;
        let numel = node.ty.numel() as usize;
        // invariant: operands precede their users in node order.
        let v = |x: &Value| vals[x.index()].as_ref().expect("operand evaluated");
        let mut idx = vec![0i64; dims.len()];
        let mut out = vec![0f64; numel];
        match &node.op {
            Op::Parameter(k) => {
                let t = &inputs[*k];
                if t.dims != dims {
                    return Err(Error::Invalid {
                        op: "evaluate",
                        message: format!("input {k} has dims {:?}, expected {}", t.dims, node.ty),
                    });
                }
                out = t.data.iter().map(|&x| round_to(x, dt)).collect();
            }
            Op::Constant(lit) => out = vec![lit.as_f64(); numel],
            Op::CustomCall(target, _) => {
                return Err(Error::Invalid {
                    op: "evaluate",
                    message: format!("custom call @{target} runs only on a device"),
                });
            }
            Op::Iota(d) => {
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    *o = idx[*d as usize] as f64;
                }
            }
            Op::Unary(u, x) => out = v(x).data.iter().map(|&a| unary(*u, a, dt)).collect(),
            Op::Binary(k, x, y) => {
                out = v(x)
                    .data
                    .iter()
                    .zip(&v(y).data)
                    .map(|(&a, &b)| binary(*k, a, b, dt))
                    .collect()
            }
            Op::Compare(c, x, y) => {
                out = v(x)
                    .data
                    .iter()
                    .zip(&v(y).data)
                    .map(|(&a, &b)| compare(*c, a, b) as i64 as f64)
                    .collect()
            }
            Op::Select(p, x, y) => {
                let (p, x, y) = (v(p), v(x), v(y));
                for (f, o) in out.iter_mut().enumerate() {
                    let c = if p.data.len() == 1 {
                        p.data[0]
                    } else {
                        p.data[f]
                    };
                    *o = if c != 0.0 { x.data[f] } else { y.data[f] };
                }
            }
            Op::Convert(x) => out = v(x).data.clone(),
            Op::Bitcast(x) => {
                let from = self.dtype(*x);
                out = v(x).data.iter().map(|&a| bitcast(a, from, dt)).collect()
            }
            Op::Reshape(x) | Op::Constraint(x, _) | Op::StopGradient(x) => out = v(x).data.clone(),
            Op::Project(bar, k) => match &self.nodes[bar.index()].op {
                Op::Barrier(xs) => out = v(&xs[*k]).data.clone(),
                _ => unreachable!("project of a barrier or scan"),
            },
            Op::Broadcast(x, bd) => {
                let xt = v(x);
                let xs = strides(&xt.dims);
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    let src: usize = bd
                        .iter()
                        .enumerate()
                        .map(|(k, &d)| {
                            if xt.dims[k] == 1 {
                                0
                            } else {
                                idx[d as usize] as usize * xs[k]
                            }
                        })
                        .sum();
                    *o = xt.data[src];
                }
            }
            Op::Transpose(x, perm) => {
                let xt = v(x);
                let xs = strides(&xt.dims);
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    *o = xt.data[perm
                        .iter()
                        .enumerate()
                        .map(|(k, &p)| idx[k] as usize * xs[p as usize])
                        .sum::<usize>()];
                }
            }
            Op::Slice(x, st, _, sr) => {
                let xt = v(x);
                let xs = strides(&xt.dims);
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    *o = xt.data[(0..dims.len())
                        .map(|d| (st[d] + idx[d] * sr[d]) as usize * xs[d])
                        .sum::<usize>()];
                }
            }
            Op::DynamicSlice(x, starts, _) => {
                let xt = v(x);
                let xs = strides(&xt.dims);
                let st: Vec<i64> = (0..dims.len())
                    .map(|d| (v(&starts[d]).data[0] as i64).clamp(0, xt.dims[d] - dims[d]))
                    .collect();
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    *o = xt.data[(0..dims.len())
                        .map(|d| (st[d] + idx[d]) as usize * xs[d])
                        .sum::<usize>()];
                }
            }
            Op::DynamicUpdateSlice(x, u, starts) => {
                let (xt, ut) = (v(x), v(u));
                out = xt.data.clone();
                let xs = strides(&dims);
                let st: Vec<i64> = (0..dims.len())
                    .map(|d| (v(&starts[d]).data[0] as i64).clamp(0, dims[d] - ut.dims[d]))
                    .collect();
                let mut ui = vec![0i64; dims.len()];
                for (f, &val) in ut.data.iter().enumerate() {
                    unravel(f, &ut.dims, &mut ui);
                    out[(0..dims.len())
                        .map(|d| (st[d] + ui[d]) as usize * xs[d])
                        .sum::<usize>()] = val;
                }
            }
            Op::Concat(xs, d) => {
                let d = *d as usize;
                let os = strides(&dims);
                let mut off = 0;
                for x in xs {
                    let xt = v(x);
                    let mut xi = vec![0i64; dims.len()];
                    for (f, &val) in xt.data.iter().enumerate() {
                        unravel(f, &xt.dims, &mut xi);
                        xi[d] += off;
                        out[ravel(&xi, &os)] = val;
                    }
                    off += xt.dims[d];
                }
            }
            Op::Pad(x, pv, lo, _, int) => {
                let xt = v(x);
                out = vec![v(pv).data[0]; numel];
                let os = strides(&dims);
                let mut xi = vec![0i64; dims.len()];
                'elems: for (f, &val) in xt.data.iter().enumerate() {
                    unravel(f, &xt.dims, &mut xi);
                    for d in 0..dims.len() {
                        idx[d] = lo[d] + xi[d] * (int[d] + 1);
                        if idx[d] < 0 || idx[d] >= dims[d] {
                            continue 'elems;
                        }
                    }
                    out[ravel(&idx, &os)] = val;
                }
            }
            Op::Dot(l, r, dd) => {
                let (lt, rt) = (v(l), v(r));
                let (ls, rs) = (strides(&lt.dims), strides(&rt.dims));
                let lfree = crate::ops::free_dims(lt.dims.len(), &dd.lhs_batch, &dd.lhs_contract);
                let rfree = crate::ops::free_dims(rt.dims.len(), &dd.rhs_batch, &dd.rhs_contract);
                let cdims: Vec<i64> = dd
                    .lhs_contract
                    .iter()
                    .map(|&c| lt.dims[c as usize])
                    .collect();
                let ncon: i64 = cdims.iter().product();
                let mut ci = vec![0i64; cdims.len()];
                let nb = dd.lhs_batch.len();
                for (f, o) in out.iter_mut().enumerate() {
                    unravel(f, &dims, &mut idx);
                    let mut lbase = 0usize;
                    let mut rbase = 0usize;
                    for k in 0..nb {
                        lbase += idx[k] as usize * ls[dd.lhs_batch[k] as usize];
                        rbase += idx[k] as usize * rs[dd.rhs_batch[k] as usize];
                    }
                    for (j, &fd) in lfree.iter().enumerate() {
                        lbase += idx[nb + j] as usize * ls[fd as usize];
                    }
                    for (j, &fd) in rfree.iter().enumerate() {
                        rbase += idx[nb + lfree.len() + j] as usize * rs[fd as usize];
                    }
                    let mut acc = 0.0;
                    for c in 0..ncon as usize {
                        unravel(c, &cdims, &mut ci);
                        let mut lo = lbase;
                        let mut ro = rbase;
                        for k in 0..ci.len() {
                            lo += ci[k] as usize * ls[dd.lhs_contract[k] as usize];
                            ro += ci[k] as usize * rs[dd.rhs_contract[k] as usize];
                        }
                        acc += lt.data[lo] * rt.data[ro];
                    }
                    *o = acc;
                }
            }
            Op::Reduce(x, kind, axes) => {
                let xt = v(x);
                let init = match kind {
                    ReduceKind::Sum => 0.0,
                    ReduceKind::Max => f64::NEG_INFINITY,
                    ReduceKind::Min => f64::INFINITY,
                };
                out = vec![init; numel];
                let os = strides(&dims);
                let mut xi = vec![0i64; xt.dims.len()];
                for (f, &val) in xt.data.iter().enumerate() {
                    unravel(f, &xt.dims, &mut xi);
                    let mut k = 0;
                    let mut of = 0;
                    for (d, &i) in xi.iter().enumerate() {
                        if !axes.contains(&(d as i64)) {
                            of += i as usize * os[k];
                            k += 1;
                        }
                    }
                    let o = &mut out[of];
                    *o = match kind {
                        ReduceKind::Sum => *o + val,
                        ReduceKind::Max => o.max(val),
                        ReduceKind::Min => o.min(val),
                    };
                }
            }
            Op::Gather(tab, ix) => {
                let (tt, it) = (v(tab), v(ix));
                let row = tt.dims[1..].iter().product::<i64>() as usize;
                for (k, &r) in it.data.iter().enumerate() {
                    let r = (r as i64).clamp(0, tt.dims[0] - 1) as usize;
                    out[k * row..(k + 1) * row].copy_from_slice(&tt.data[r * row..(r + 1) * row]);
                }
            }
            Op::ScatterAdd(o, ix, u) => {
                let (ot, it, ut) = (v(o), v(ix), v(u));
                out = ot.data.clone();
                let row = if dims.is_empty() {
                    1
                } else {
                    dims[1..].iter().product::<i64>() as usize
                };
                for (k, &r) in it.data.iter().enumerate() {
                    let r = r as i64;
                    if r < 0 || r >= dims[0] {
                        continue;
                    }
                    let r = r as usize;
                    for j in 0..row {
                        out[r * row + j] += ut.data[k * row + j];
                    }
                }
            }
            Op::Barrier(_) | Op::Scan(..) => {
                unreachable!("multi-result nodes are evaluated by the caller")
            }
        }
        for o in &mut out {
            *o = round_to(*o, dt);
        }
        Ok(Tensor { dims, data: out })
    }
}

/// Runs a scan body `n` times on the host: results are the final carries
/// and the stacked ys.
fn eval_scan(body: &crate::scan::ScanBody, args: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (k, m) = (body.n_carry, body.n_xs);
    let mut carries: Vec<Tensor> = args[..k].iter().map(|t| (*t).clone()).collect();
    let tys = body.result_types();
    let mut stacks: Vec<Tensor> = tys[k..]
        .iter()
        .map(|t| Tensor::new(t.dims.clone(), vec![0.0; t.numel() as usize]))
        .collect();
    for step in 0..body.n {
        let i = if body.reverse {
            body.n - 1 - step
        } else {
            step
        } as usize;
        let mut inputs = carries.clone();
        for x in &args[k..k + m] {
            let row = x.data.len() / body.n as usize;
            inputs.push(Tensor::new(
                x.dims[1..].to_vec(),
                x.data[i * row..(i + 1) * row].to_vec(),
            ));
        }
        inputs.extend(args[k + m..].iter().map(|t| (*t).clone()));
        let outs = body.body.evaluate(&inputs, &body.outputs)?;
        for (s, y) in stacks.iter_mut().zip(&outs[k..]) {
            let row = y.data.len();
            s.data[i * row..(i + 1) * row].copy_from_slice(&y.data);
        }
        carries = outs[..k].to_vec();
    }
    carries.extend(stacks);
    Ok(carries)
}
