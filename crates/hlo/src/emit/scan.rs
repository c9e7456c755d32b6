//! `stablehlo.while` for scan nodes.

use std::fmt::Write;

use super::{Emitter, live_from};
use crate::op::Literal;
use crate::scan::ScanBody;
use crate::{DType, TensorType, Value};

impl Emitter<'_> {
    /// A `stablehlo.while` running a scan body; results are the counter,
    /// the carries and the stacked ys (then the xs and consts, unchanged).
    pub(super) fn scan(&mut self, i: usize, body: &ScanBody, inputs: &[Value]) {
        let b = self.b;
        let w = format!("w{}_", self.names[i]);
        let ind = self.indent.clone();
        let (k, m) = (body.n_carry, body.n_xs);
        let i32t = "tensor<i32>";
        let zero = self.const_name(Literal::Int(0), TensorType::scalar(DType::I32));
        let res_tys = body.result_types();
        let stack_init: Vec<String> = res_tys[k..]
            .iter()
            .map(|t| {
                let lit = crate::builder::literal_for(0.0, t.dtype);
                self.const_name(lit, t.clone())
            })
            .collect();
        let mut args = vec![format!("%{w}i = %{zero}")];
        let mut tys = vec![i32t.to_string()];
        for (j, v) in inputs[..k].iter().enumerate() {
            args.push(format!("%{w}a{j} = %{}", self.names[v.index()]));
            tys.push(self.ty(*v));
        }
        for (j, name) in stack_init.iter().enumerate() {
            args.push(format!("%{w}s{j} = %{name}"));
            tys.push(res_tys[k + j].to_string());
        }
        for (j, v) in inputs[k..].iter().enumerate() {
            let tag = if j < m {
                format!("x{j}")
            } else {
                format!("k{}", j - m)
            };
            args.push(format!("%{w}{tag} = %{}", self.names[v.index()]));
            tys.push(self.ty(*v));
        }
        let _ = writeln!(
            self.out,
            "{ind}%{}:{} = stablehlo.while({}) : {}",
            self.names[i],
            args.len(),
            args.join(", "),
            tys.join(", ")
        );
        let _ = writeln!(self.out, "{ind}  cond {{");
        let _ = writeln!(
            self.out,
            "{ind}    %{w}n = stablehlo.constant dense<{}> : {i32t}",
            body.n
        );
        let _ = writeln!(
            self.out,
            "{ind}    %{w}lt = stablehlo.compare LT, %{w}i, %{w}n, SIGNED : ({i32t}, {i32t}) -> tensor<i1>"
        );
        let _ = writeln!(self.out, "{ind}    stablehlo.return %{w}lt : tensor<i1>");
        let _ = writeln!(self.out, "{ind}  }} do {{");
        let _ = writeln!(
            self.out,
            "{ind}    %{w}z = stablehlo.constant dense<0> : {i32t}"
        );
        let _ = writeln!(
            self.out,
            "{ind}    %{w}one = stablehlo.constant dense<1> : {i32t}"
        );
        let idx = if body.reverse {
            let _ = writeln!(
                self.out,
                "{ind}    %{w}last = stablehlo.constant dense<{}> : {i32t}",
                body.n - 1
            );
            let _ = writeln!(
                self.out,
                "{ind}    %{w}idx = stablehlo.subtract %{w}last, %{w}i : {i32t}"
            );
            format!("%{w}idx")
        } else {
            format!("%{w}i")
        };
        let at = |rank: usize| {
            let mut s = idx.clone();
            for _ in 1..rank {
                let _ = write!(s, ", %{w}z");
            }
            s
        };
        let params = body.body.parameters();
        let mut inner = Emitter::new(&body.body, format!("{w}b"), format!("{ind}    "));
        inner.highest = self.highest;
        for (j, p) in params[..k].iter().enumerate() {
            inner.names[p.index()] = format!("{w}a{j}");
        }
        for j in 0..m {
            let full = self.b.ty(inputs[k + j]).clone();
            let slice_ty = body.body.ty(params[k + j]);
            let mut one = full.clone();
            one.dims[0] = 1;
            let sizes: Vec<String> = one.dims.iter().map(|d| d.to_string()).collect();
            let idx_tys = vec![i32t; full.rank()].join(", ");
            let _ = writeln!(
                self.out,
                "{ind}    %{w}xs{j} = stablehlo.dynamic_slice %{w}x{j}, {}, sizes = [{}] : ({full}, {idx_tys}) -> {one}",
                at(full.rank()),
                sizes.join(", ")
            );
            let _ = writeln!(
                self.out,
                "{ind}    %{w}xr{j} = stablehlo.reshape %{w}xs{j} : ({one}) -> {slice_ty}"
            );
            inner.names[params[k + j].index()] = format!("{w}xr{j}");
        }
        for j in 0..body.n_consts {
            inner.names[params[k + m + j].index()] = format!("{w}k{j}");
        }
        inner.nodes(&live_from(&body.body, &body.outputs));
        let outs: Vec<String> = body
            .outputs
            .iter()
            .map(|o| inner.names[o.index()].clone())
            .collect();
        self.out.push_str(&inner.out);
        let mut rets = vec![format!("%{w}inext")];
        for o in &outs[..k] {
            rets.push(format!("%{o}"));
        }
        for (j, t) in res_tys[k..].iter().enumerate() {
            let yt = body.body.ty(body.outputs[k + j]);
            let mut one = t.clone();
            one.dims[0] = 1;
            let idx_tys = vec![i32t; t.rank()].join(", ");
            let _ = writeln!(
                self.out,
                "{ind}    %{w}yr{j} = stablehlo.reshape %{} : ({yt}) -> {one}",
                outs[k + j]
            );
            let _ = writeln!(
                self.out,
                "{ind}    %{w}yn{j} = stablehlo.dynamic_update_slice %{w}s{j}, %{w}yr{j}, {} : ({t}, {one}, {idx_tys}) -> {t}",
                at(t.rank())
            );
            rets.push(format!("%{w}yn{j}"));
        }
        for j in 0..inputs.len() - k {
            rets.push(if j < m {
                format!("%{w}x{j}")
            } else {
                format!("%{w}k{}", j - m)
            });
        }
        let _ = writeln!(
            self.out,
            "{ind}    %{w}inext = stablehlo.add %{w}i, %{w}one : {i32t}"
        );
        let _ = writeln!(
            self.out,
            "{ind}    stablehlo.return {} : {}",
            rets.join(", "),
            tys.join(", ")
        );
        let _ = write!(self.out, "{ind}  }}");
        let _ = b;
    }
}
