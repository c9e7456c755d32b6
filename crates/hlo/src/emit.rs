//! StableHLO text emission (pretty form, Shardy attributes), deterministic.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::builder::sanitize;
use crate::op::{Literal, Op, ReduceKind, UnaryOp};
use crate::scan::ScanBody;
use crate::{Builder, DType, Program, TensorType, Value};

impl Program {
    /// The module as StableHLO text, as PJRT plugins compile it. The same
    /// program always gives the same bytes. Ops carry `loc("scope")` with
    /// the name scope they were built in; parameters keep their names.
    /// With `MESHTRAIN_DUMP_HLO=DIR` set, the text is also written to
    /// `DIR/<name>.mlir` (a failure to write is reported on stderr).
    pub fn to_mlir(&self) -> String {
        let text = emit(self);
        if let Some(dir) = Program::dump_dir() {
            match self.write_module(&dir, &text) {
                Ok(path) => eprintln!("hlo: wrote {}", path.display()),
                Err(e) => eprintln!("hlo: MESHTRAIN_DUMP_HLO: {e}"),
            }
        }
        text
    }
}

/// The module text, without the debug dump.
pub(crate) fn emit(p: &Program) -> String {
    Emitter::new(&p.b, String::new(), "    ".into()).run(p)
}

/// Marks the nodes of `b` that `roots` (and the parameters) depend on.
fn live_from(b: &Builder, roots: &[Value]) -> Vec<bool> {
    let mut live = vec![false; b.nodes.len()];
    for &o in roots {
        live[o.index()] = true;
    }
    for p in &b.params {
        live[p.value.index()] = true;
    }
    for i in (0..b.nodes.len()).rev() {
        if live[i] {
            for o in b.nodes[i].op.operands() {
                live[o.index()] = true;
            }
        }
    }
    live
}

/// Writes the ops of one graph (the function body, or a loop body).
struct Emitter<'a> {
    b: &'a Builder,
    out: String,
    names: Vec<String>,
    consts: HashMap<(Literal, TensorType), String>,
    n_consts: usize,
    /// Prefix of every SSA name (empty in the function, `w5_b` in a loop body).
    prefix: String,
    indent: String,
}

impl<'a> Emitter<'a> {
    fn new(b: &'a Builder, prefix: String, indent: String) -> Self {
        Emitter {
            b,
            out: String::with_capacity(b.nodes.len() * 128),
            names: vec![String::new(); b.nodes.len()],
            consts: HashMap::new(),
            n_consts: 0,
            prefix,
            indent,
        }
    }

    fn ty(&self, v: Value) -> String {
        self.b.ty(v).to_string()
    }

    fn run(mut self, p: &Program) -> String {
        let b = self.b;
        let _ = writeln!(
            self.out,
            "module @{} attributes {{mhlo.num_partitions = {} : i32, mhlo.num_replicas = 1 : i32}} {{",
            b.name,
            p.num_partitions()
        );
        if let Some(m) = &b.mesh {
            let _ = writeln!(self.out, "  sdy.mesh @mesh = {}", m.to_mlir());
        }
        // Signature.
        let mut used = HashSet::new();
        self.out.push_str("  func.func public @main(");
        for (i, prm) in b.params.iter().enumerate() {
            let mut name = sanitize(&prm.name);
            while !used.insert(name.clone()) {
                name.push('_');
            }
            if i > 0 {
                self.out.push_str(", ");
            }
            let mut attrs = Vec::new();
            if b.mesh.is_some() {
                let s = prm
                    .sharding
                    .clone()
                    .unwrap_or_else(|| crate::Sharding::replicated(b.ty(prm.value).rank()));
                attrs.push(format!("sdy.sharding = #sdy.sharding{s}"));
            }
            if let Some(k) = p.aliases[i] {
                attrs.push(format!("tf.aliasing_output = {k} : i32"));
            }
            let _ = write!(self.out, "%{name}: {}", self.ty(prm.value));
            if !attrs.is_empty() {
                let _ = write!(self.out, " {{{}}}", attrs.join(", "));
            }
            self.names[prm.value.index()] = name;
        }
        self.out.push_str(") -> (");
        for (i, &o) in p.outputs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.out.push_str(&self.ty(o));
            if b.mesh.is_some() {
                let s = p.out_shardings[i]
                    .clone()
                    .unwrap_or_else(|| crate::Sharding::replicated(b.ty(o).rank()));
                let _ = write!(self.out, " {{sdy.sharding = #sdy.sharding{s}}}");
            }
        }
        self.out.push_str(") {\n");
        self.nodes(&live_from(b, &p.outputs));
        let outs: Vec<String> = p
            .outputs
            .iter()
            .map(|o| format!("%{}", self.names[o.index()]))
            .collect();
        let tys: Vec<String> = p.outputs.iter().map(|&o| self.ty(o)).collect();
        if outs.is_empty() {
            self.out.push_str("    return\n");
        } else {
            let _ = writeln!(
                self.out,
                "    return {} : {}",
                outs.join(", "),
                tys.join(", ")
            );
        }
        self.out.push_str("  }\n}\n");
        self.out
    }

    /// Writes every live node except parameters (whose names are set).
    fn nodes(&mut self, live: &[bool]) {
        let b = self.b;
        let mut counter = 0usize;
        for (i, node) in b.nodes.iter().enumerate() {
            if !live[i] || matches!(node.op, Op::Parameter(_)) {
                continue;
            }
            if let Op::Project(parent, k) = node.op {
                let base = &self.names[parent.index()];
                self.names[i] = match &b.nodes[parent.index()].op {
                    Op::Barrier(xs) if xs.len() > 1 => format!("{base}#{k}"),
                    Op::Scan(..) => format!("{base}#{}", k + 1),
                    _ => base.clone(),
                };
                continue;
            }
            if let Op::StopGradient(x) = node.op {
                self.names[i] = self.names[x.index()].clone();
                continue;
            }
            if let Op::Constant(lit) = node.op {
                let key = (lit, node.ty.clone());
                if let Some(name) = self.consts.get(&key) {
                    self.names[i] = name.clone();
                    continue;
                }
            }
            self.names[i] = format!("{}{counter}", self.prefix);
            counter += 1;
            self.node(i);
            let scope = &b.scopes[node.scope as usize];
            if !scope.is_empty() {
                let _ = write!(self.out, " loc(\"{}\")", scope.replace(['"', '\\'], "_"));
            }
            self.out.push('\n');
        }
    }

    /// A `stablehlo.while` running a scan body; results are the counter,
    /// the carries and the stacked ys (then the xs and consts, unchanged).
    fn scan(&mut self, i: usize, body: &ScanBody, inputs: &[Value]) {
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

    /// A scalar constant emitted on first use (reduction inits), deduplicated
    /// with the graph's own constants.
    fn const_name(&mut self, lit: Literal, ty: TensorType) -> String {
        if let Some(n) = self.consts.get(&(lit, ty.clone())) {
            return n.clone();
        }
        let name = format!("{}c{}", self.prefix, self.n_consts);
        self.n_consts += 1;
        let _ = writeln!(
            self.out,
            "{}%{name} = stablehlo.constant dense<{}> : {ty}",
            self.indent,
            literal_text(lit, ty.dtype)
        );
        self.consts.insert((lit, ty), name.clone());
        name
    }

    fn node(&mut self, i: usize) {
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
                format!(
                    "stablehlo.dot_general {}, {}, {batch}contracting_dims = [{}] x [{}] : ({}, {}) -> {ty}",
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
