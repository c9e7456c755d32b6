//! StableHLO text emission (pretty form, Shardy attributes), deterministic.

mod ops;
mod scan;

pub(crate) use ops::literal_text;

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::builder::sanitize;
use crate::op::{Literal, Op};
use crate::{Builder, Program, TensorType, Value};

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
    let mut e = Emitter::new(&p.b, String::new(), "    ".into());
    e.highest = p.dot_precision == crate::DotPrecision::Highest;
    e.run(p)
}

/// Marks the nodes of `b` that `roots` (and the parameters) depend on.
pub(crate) fn live_from(b: &Builder, roots: &[Value]) -> Vec<bool> {
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
    /// f32 contractions carry `precision = [HIGHEST, HIGHEST]`.
    highest: bool,
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
            highest: false,
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
}
