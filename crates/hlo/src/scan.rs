//! Loops: `scan` over a leading axis (`stablehlo.while`), and its gradient,
//! a reverse scan that replays each iteration's body from its saved carry.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::shape_err;
use crate::op::{BodyRef, Op};
use crate::{Builder, Error, Result, TensorType, Value};

/// The body of a scan: a graph of its own whose parameters are the carries,
/// one slice of each `xs`, and the constants, in that order.
#[derive(Debug)]
pub(crate) struct ScanBody {
    pub body: Builder,
    /// New carries, then per-iteration outputs `ys` (user ys, then residuals).
    pub outputs: Vec<Value>,
    pub n: i64,
    pub n_carry: usize,
    pub n_xs: usize,
    pub n_consts: usize,
    /// How many trailing ys are the iteration's input carries, saved for the gradient.
    pub n_residual: usize,
    /// Iterate from `n - 1` down to 0.
    pub reverse: bool,
}

impl ScanBody {
    /// The types of the scan's results: final carries, then `[n, ...]` stacked ys.
    pub(crate) fn result_types(&self) -> Vec<TensorType> {
        self.outputs
            .iter()
            .enumerate()
            .map(|(j, &o)| {
                let t = self.body.ty(o);
                if j < self.n_carry {
                    t.clone()
                } else {
                    let mut dims = vec![self.n];
                    dims.extend(&t.dims);
                    TensorType::new(t.dtype, dims)
                }
            })
            .collect()
    }
}

impl Builder {
    /// Runs `body(carry, x, consts)` for `i` in `0..n`, where `x` holds slice
    /// `i` of each of `xs` (their leading dimension is `n`) and `consts` are
    /// passed unchanged. The body returns the next carries (same types) and
    /// per-iteration outputs `ys`. Returns the final carries and the ys
    /// stacked along a new leading axis of size `n`. Emitted as one
    /// `stablehlo.while` (one copy of the body however large `n` is, as
    /// MaxText's `scan_layers`); its gradient is a reverse loop that replays
    /// each iteration from its saved input carry (full remat per iteration).
    ///
    /// The body sees only its arguments: values of the enclosing builder
    /// must be passed in `consts` (using one inside is an error).
    ///
    /// ```
    /// use hlo::{Builder, Tensor, TensorType};
    /// # fn main() -> hlo::Result<()> {
    /// let mut b = Builder::new("layers");
    /// let x = b.parameter("x", TensorType::f32([2, 4]));
    /// let w = b.parameter("w", TensorType::f32([3, 4, 4])); // 3 stacked layers
    /// let (fin, _) = b.scan(3, &[x], &[w], &[], |b, carry, ws, _| {
    ///     let h = b.matmul(carry[0], ws[0])?; // [2, 4]
    ///     Ok((vec![b.tanh(h)?], vec![]))
    /// })?;
    /// let loss = b.sum(fin[0], &[0, 1])?;
    /// let dw = b.grad(loss, &[w])?[0]; // [3, 4, 4], from a reverse loop
    /// let p = b.build(&[loss, dw])?;
    /// assert_eq!(p.to_mlir().matches("stablehlo.while").count(), 2);
    /// let out = p.evaluate(&[Tensor::new([2, 4], vec![0.5; 8]), Tensor::new([3, 4, 4], vec![0.0; 48])])?;
    /// assert_eq!(out[0].data, vec![0.0]);
    /// # Ok(()) }
    /// ```
    pub fn scan<F>(
        &mut self,
        n: i64,
        init: &[Value],
        xs: &[Value],
        consts: &[Value],
        body: F,
    ) -> Result<(Vec<Value>, Vec<Value>)>
    where
        F: FnOnce(&mut Builder, &[Value], &[Value], &[Value]) -> Result<(Vec<Value>, Vec<Value>)>,
    {
        let mut child = self.child("scan");
        let mut params = Vec::new();
        for (j, &v) in init.iter().enumerate() {
            let t = self.check("scan", v)?.clone();
            params.push(child.parameter(&format!("carry{j}"), t));
        }
        for (j, &v) in xs.iter().enumerate() {
            let t = self.check("scan", v)?.clone();
            if t.rank() == 0 || t.dims[0] != n {
                return shape_err("scan", &[&t], format!("xs with a leading dimension of {n}"));
            }
            params.push(child.parameter(
                &format!("x{j}"),
                TensorType::new(t.dtype, t.dims[1..].to_vec()),
            ));
        }
        for (j, &v) in consts.iter().enumerate() {
            let t = self.check("scan", v)?.clone();
            params.push(child.parameter(&format!("const{j}"), t));
        }
        let (k, m) = (init.len(), xs.len());
        let (carries, ys) = body(
            &mut child,
            &params[..k],
            &params[k..k + m],
            &params[k + m..],
        )?;
        if carries.len() != k {
            return Err(Error::Invalid {
                op: "scan",
                message: format!("the body returned {} carries for {k}", carries.len()),
            });
        }
        for (j, &c) in carries.iter().enumerate() {
            let t = child.check("scan", c)?;
            if t != child.ty(params[j]) {
                return shape_err(
                    "scan",
                    &[child.ty(params[j]), t],
                    format!("carry {j} to keep its type"),
                );
            }
        }
        for &y in &ys {
            child.check("scan", y)?;
        }
        let mut outputs = carries;
        outputs.extend(&ys);
        outputs.extend(&params[..k]); // residuals for the gradient
        let body = ScanBody {
            body: child,
            outputs,
            n,
            n_carry: k,
            n_xs: m,
            n_consts: consts.len(),
            n_residual: k,
            reverse: false,
        };
        let inputs: Vec<Value> = init.iter().chain(xs).chain(consts).copied().collect();
        let results = self.push_scan(body, inputs);
        Ok((results[..k].to_vec(), results[k..k + ys.len()].to_vec()))
    }

    /// A fresh builder for a loop body: same mesh, scopes under the current one.
    fn child(&self, name: &str) -> Builder {
        let mut child = Builder::new(name);
        child.mesh = self.mesh.clone();
        let scope = self.scopes[self.current_scope_id() as usize].clone();
        if !scope.is_empty() {
            child.push_scope(&scope);
        }
        child
    }

    /// Adds a scan node and one `Project` per result.
    pub(crate) fn push_scan(&mut self, body: ScanBody, inputs: Vec<Value>) -> Vec<Value> {
        let tys = body.result_types();
        let node = self.push_raw(Op::Scan(BodyRef(Arc::new(body)), inputs), tys[0].clone());
        tys.into_iter()
            .enumerate()
            .map(|(i, t)| self.push_raw(Op::Project(node, i), t))
            .collect()
    }

    /// How many results a scan node has.
    pub(crate) fn scan_results(&self, scan: Value) -> usize {
        match &self.nodes[scan.index()].op {
            Op::Scan(body, _) => body.0.outputs.len(),
            _ => 0,
        }
    }

    /// Copies the nodes of `other` that `outputs` need into this builder,
    /// with `other`'s parameters replaced by `args`; returns the copies of `outputs`.
    pub(crate) fn inline(
        &mut self,
        other: &Builder,
        args: &[Value],
        outputs: &[Value],
    ) -> Result<Vec<Value>> {
        let n = outputs.iter().map(|o| o.index() + 1).max().unwrap_or(0);
        let mut need = vec![false; n];
        for o in outputs {
            need[o.index()] = true;
        }
        for i in (0..n).rev() {
            if need[i] {
                for o in other.nodes[i].op.operands() {
                    need[o.index()] = true;
                }
            }
        }
        let mut map: HashMap<usize, Value> = HashMap::new();
        for (i, node) in other.nodes.iter().enumerate().take(n) {
            if !need[i] {
                continue;
            }
            let v = match &node.op {
                Op::Parameter(k) => args[*k],
                op => {
                    let ops: Vec<Value> = op.operands().iter().map(|o| map[&o.index()]).collect();
                    let new = op.with_operands(&ops);
                    if matches!(op, Op::Barrier(_) | Op::Scan(..) | Op::Project(..)) {
                        self.push_raw(new, node.ty.clone())
                    } else {
                        self.push(new, node.ty.clone())
                    }
                }
            };
            map.insert(i, v);
        }
        Ok(outputs.iter().map(|o| map[&o.index()]).collect())
    }
}

/// Cotangents of a scan's operands from the cotangents of its results
/// (`cts[j]` for result `j`; missing ones are zero): a reverse scan whose
/// body replays the forward body from the saved carry and differentiates it.
pub(crate) fn scan_vjp(
    b: &mut Builder,
    node: Value,
    body: &BodyRef,
    inputs: &[Value],
    cts: &[Option<Value>],
    remap: &HashMap<Value, Value>,
) -> Result<Vec<(Value, Value)>> {
    let sb = &body.0;
    let (k, m, c, r) = (sb.n_carry, sb.n_xs, sb.n_consts, sb.n_residual);
    if r != k {
        return Err(Error::Invalid {
            op: "scan",
            message: "this loop was not built for differentiation".into(),
        });
    }
    let p = sb.outputs.len() - k - r; // user ys
    let p_of = |v: Value| *remap.get(&v).unwrap_or(&v);
    let res_tys = sb.result_types();
    let project = |b: &mut Builder, j: usize| b.push_raw(Op::Project(node, j), res_tys[j].clone());
    let ct_of = |b: &mut Builder, j: usize| match cts.get(j).copied().flatten() {
        Some(g) => g,
        None => b.constant(0.0, res_tys[j].clone()),
    };
    let ct_final: Vec<Value> = (0..k).map(|j| ct_of(b, j)).collect();
    let ct_ys: Vec<Value> = (k..k + p).map(|j| ct_of(b, j)).collect();
    let residuals: Vec<Value> = (k + p..k + p + r).map(|j| project(b, j)).collect();

    // The differentiated body: params (carry, x, consts, ct of new carries, ct of ys).
    let mut dbody = sb.body.clone();
    let body_params = dbody.parameters();
    let mut seeds = Vec::new();
    for (j, &o) in sb.outputs[..k + p].iter().enumerate() {
        let t = dbody.ty(o).clone();
        let g = dbody.parameter(&format!("ct{j}"), t);
        if dbody.dtype(o).is_float() {
            seeds.push((o, g));
        }
    }
    let grads = dbody.backprop(&seeds, &body_params)?;

    // The reverse loop's body: carries (ct carry, ct consts), xs (saved
    // carry, x, ct y), consts.
    let mut rb = b.child("scan_grad");
    let tys = |bb: &Builder, vs: &[Value]| vs.iter().map(|&v| bb.ty(v).clone()).collect::<Vec<_>>();
    let carry_tys = tys(&sb.body, &body_params[..k]);
    let x_tys = tys(&sb.body, &body_params[k..k + m]);
    let const_tys = tys(&sb.body, &body_params[k + m..]);
    let y_tys = tys(&sb.body, &sb.outputs[k..k + p]);
    let mut decl = |name: &str, ts: &[TensorType]| -> Vec<Value> {
        ts.iter()
            .enumerate()
            .map(|(j, t)| rb.parameter(&format!("{name}{j}"), t.clone()))
            .collect()
    };
    let ct_carry = decl("ct_carry", &carry_tys);
    let acc = decl("ct_const", &const_tys);
    let saved = decl("saved", &carry_tys);
    let x_i = decl("x", &x_tys);
    let ct_y = decl("ct_y", &y_tys);
    let consts = decl("const", &const_tys);
    let args: Vec<Value> = saved
        .iter()
        .chain(&x_i)
        .chain(&consts)
        .chain(&ct_carry)
        .chain(&ct_y)
        .copied()
        .collect();
    let g = rb.inline(&dbody, &args, &grads)?;
    let mut carries: Vec<Value> = g[..k].to_vec();
    for (j, &a) in acc.iter().enumerate() {
        carries.push(rb.add(a, g[k + m + j])?);
    }
    let mut outputs = carries;
    outputs.extend(&g[k..k + m]);
    let rbody = ScanBody {
        body: rb,
        outputs,
        n: sb.n,
        n_carry: k + c,
        n_xs: k + m + p,
        n_consts: c,
        n_residual: 0,
        reverse: !sb.reverse,
    };
    let consts_in: Vec<Value> = inputs[k + m..].iter().map(|&v| p_of(v)).collect();
    let xs_in: Vec<Value> = inputs[k..k + m].iter().map(|&v| p_of(v)).collect();
    let mut rin: Vec<Value> = ct_final;
    for &cv in &consts_in {
        rin.push(b.zeros_like(cv));
    }
    rin.extend(&residuals);
    rin.extend(&xs_in);
    rin.extend(&ct_ys);
    rin.extend(&consts_in);
    let res = b.push_scan(rbody, rin);
    let mut out = Vec::new();
    for j in 0..k {
        out.push((inputs[j], res[j]));
    }
    for j in 0..c {
        out.push((inputs[k + m + j], res[k + j]));
    }
    for j in 0..m {
        out.push((inputs[k + j], res[k + c + j]));
    }
    Ok(out)
}
