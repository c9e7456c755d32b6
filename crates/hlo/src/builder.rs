//! The graph arena: nodes, values, parameters, name scopes, interning.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::op::{Literal, Op};
use crate::remat::{Region, RematPolicy};
use crate::sharding::{Mesh, Sharding};
use crate::{DType, Error, Result, TensorType};

/// A handle to one tensor in a [`Builder`]'s graph. Small and `Copy`; only
/// meaningful for the builder that returned it (ops check that).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    index: u32,
    owner: u32,
}

impl Value {
    /// The node index (the order values were created in).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

static NEXT_BUILDER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

pub(crate) const NO_REGION: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub op: Op,
    /// For a multi-result node, the type of its first result (unused).
    pub ty: TensorType,
    pub scope: u32,
    pub region: u32,
}

/// An input of the program.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub name: String,
    pub value: Value,
    pub sharding: Option<Sharding>,
}

/// Builds one tensor program. Ops are methods that check shapes and dtypes
/// and return a [`Value`]; identical pure ops are interned (added once), so
/// the graph and the emitted module are free of common subexpressions.
#[derive(Clone, Debug)]
pub struct Builder {
    id: u32,
    pub(crate) name: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) params: Vec<Param>,
    pub(crate) scopes: Vec<String>,
    scope_ids: HashMap<String, u32>,
    scope_stack: Vec<u32>,
    intern: HashMap<u64, Vec<u32>>,
    pub(crate) regions: Vec<Region>,
    pub(crate) current_region: u32,
    pub(crate) mesh: Option<Mesh>,
}

impl Builder {
    /// A new, empty program called `name` (the MLIR module name).
    pub fn new(name: &str) -> Builder {
        Builder {
            id: NEXT_BUILDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            name: sanitize(name),
            nodes: Vec::new(),
            params: Vec::new(),
            scopes: vec![String::new()],
            scope_ids: HashMap::from([(String::new(), 0)]),
            scope_stack: vec![0],
            intern: HashMap::new(),
            regions: Vec::new(),
            current_region: NO_REGION,
            mesh: None,
        }
    }

    /// Declares the device mesh the program's shardings refer to.
    pub fn set_mesh(&mut self, mesh: Mesh) {
        self.mesh = Some(mesh);
    }

    /// The declared mesh, if any.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Number of nodes so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node has been added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The type of a value. Panics if `v` is not from this builder.
    pub fn ty(&self, v: Value) -> &TensorType {
        assert_eq!(
            v.owner,
            self.id,
            "value %{} belongs to another builder",
            v.index()
        );
        &self.nodes[v.index()].ty
    }

    /// The dimensions of a value.
    pub fn dims(&self, v: Value) -> &[i64] {
        &self.ty(v).dims
    }

    /// The element type of a value.
    pub fn dtype(&self, v: Value) -> DType {
        self.ty(v).dtype
    }

    /// The rank of a value.
    pub fn rank(&self, v: Value) -> usize {
        self.ty(v).rank()
    }

    /// The full name scope (`layers.3.self_attn`) a value was created in.
    pub fn scope_of(&self, v: Value) -> &str {
        &self.scopes[self.nodes[v.index()].scope as usize]
    }

    // ---- parameters ----

    /// Declares a program input. Its position in the emitted `@main` is the
    /// order of declaration. `name` is used for the MLIR argument name.
    pub fn parameter(&mut self, name: &str, ty: TensorType) -> Value {
        let index = self.params.len();
        let v = self.push_raw(Op::Parameter(index), ty);
        self.params.push(Param {
            name: name.to_string(),
            value: v,
            sharding: None,
        });
        v
    }

    /// Declares a sharded program input.
    pub fn parameter_sharded(
        &mut self,
        name: &str,
        ty: TensorType,
        sharding: Sharding,
    ) -> Result<Value> {
        sharding.check(self.mesh.as_ref(), &ty, name)?;
        let v = self.parameter(name, ty);
        // invariant: `parameter` just pushed one.
        self.params.last_mut().expect("just pushed").sharding = Some(sharding);
        Ok(v)
    }

    /// The declared parameters, in order.
    pub fn parameters(&self) -> Vec<Value> {
        self.params.iter().map(|p| p.value).collect()
    }

    // ---- name scopes ----

    /// Runs `f` inside a name scope; scopes nest with `.`:
    /// `b.scope("layers.3", |b| b.scope("mlp", ...))` names ops `layers.3.mlp`.
    pub fn scope<T>(&mut self, name: &str, f: impl FnOnce(&mut Builder) -> T) -> T {
        self.push_scope(name);
        let out = f(self);
        self.pop_scope();
        out
    }

    /// Enters a name scope (see [`Builder::scope`]).
    pub fn push_scope(&mut self, name: &str) {
        // invariant: the root scope is never popped (`pop_scope` keeps it).
        let parent = &self.scopes[*self.scope_stack.last().expect("root scope") as usize];
        let full = if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}.{name}")
        };
        let id = match self.scope_ids.get(&full) {
            Some(&id) => id,
            None => {
                let id = self.scopes.len() as u32;
                self.scopes.push(full.clone());
                self.scope_ids.insert(full, id);
                id
            }
        };
        self.scope_stack.push(id);
    }

    /// Leaves the innermost name scope (the root scope is never popped).
    pub fn pop_scope(&mut self) {
        if self.scope_stack.len() > 1 {
            self.scope_stack.pop();
        }
    }

    // ---- node insertion ----

    /// The handle of node `index`.
    pub(crate) fn value(&self, index: usize) -> Value {
        Value {
            index: index as u32,
            owner: self.id,
        }
    }

    /// The innermost scope's id.
    pub(crate) fn current_scope_id(&self) -> u32 {
        // invariant: the root scope is never popped.
        *self.scope_stack.last().expect("root scope")
    }

    /// Checks that `v` is a tensor value of this builder.
    pub fn check(&self, op: &'static str, v: Value) -> Result<&TensorType> {
        if v.owner != self.id {
            return Err(Error::Invalid {
                op,
                message: format!(
                    "value %{} belongs to another builder (a scan body sees only its arguments)",
                    v.index()
                ),
            });
        }
        match self.nodes.get(v.index()) {
            Some(n) if !n.op.is_multi() => Ok(&n.ty),
            Some(_) => Err(Error::Invalid {
                op,
                message: "a multi-result node is not a tensor".into(),
            }),
            None => Err(Error::UnknownValue {
                op,
                index: v.index(),
                len: self.nodes.len(),
            }),
        }
    }

    /// Adds a node without interning.
    pub(crate) fn push_raw(&mut self, op: Op, ty: TensorType) -> Value {
        let v = self.value(self.nodes.len());
        // invariant: the root scope is never popped.
        let scope = *self.scope_stack.last().expect("root scope");
        self.nodes.push(Node {
            op,
            ty,
            scope,
            region: self.current_region,
        });
        v
    }

    /// Adds a pure node, or returns the identical node added before.
    pub(crate) fn push(&mut self, op: Op, ty: TensorType) -> Value {
        let mut h = DefaultHasher::new();
        op.hash(&mut h);
        ty.hash(&mut h);
        let key = h.finish();
        if let Some(cands) = self.intern.get(&key) {
            for &c in cands {
                let n = &self.nodes[c as usize];
                if n.op == op && n.ty == ty {
                    return self.value(c as usize);
                }
            }
        }
        let v = self.push_raw(op, ty);
        self.intern.entry(key).or_default().push(v.index);
        v
    }

    /// A constant with every element equal to `value` (converted to `ty`'s dtype).
    pub fn constant(&mut self, value: f64, ty: TensorType) -> Value {
        let lit = literal_for(value, ty.dtype);
        self.push(Op::Constant(lit), ty)
    }

    /// A scalar constant.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> Value {
        self.constant(value, TensorType::scalar(dtype))
    }

    /// Zeros shaped like `v`.
    pub fn zeros_like(&mut self, v: Value) -> Value {
        let ty = self.ty(v).clone();
        self.constant(0.0, ty)
    }

    /// `iota` along `dim`: element `[i0, i1, ...]` is `i_dim`.
    pub fn iota(&mut self, ty: TensorType, dim: usize) -> Result<Value> {
        if dim >= ty.rank() || ty.dtype == DType::Bool {
            return crate::error::shape_err(
                "iota",
                &[&ty],
                format!("a numeric type with dimension {dim}"),
            );
        }
        Ok(self.push(Op::Iota(dim as i64), ty))
    }

    /// Replaces the innermost scope by `id` and returns the one it replaced.
    pub(crate) fn set_scope_id(&mut self, id: u32) -> u32 {
        // invariant: the root scope is never popped.
        std::mem::replace(self.scope_stack.last_mut().expect("root scope"), id)
    }

    pub(crate) fn enter_region(&mut self, policy: RematPolicy) -> Result<u32> {
        if self.current_region != NO_REGION {
            return Err(Error::Invalid {
                op: "remat",
                message: "remat regions cannot nest".into(),
            });
        }
        let id = self.regions.len() as u32;
        self.regions.push(Region {
            policy,
            start: self.nodes.len(),
            end: self.nodes.len(),
        });
        self.current_region = id;
        Ok(id)
    }

    pub(crate) fn leave_region(&mut self, id: u32) {
        self.regions[id as usize].end = self.nodes.len();
        self.current_region = NO_REGION;
    }
}

/// The literal a constant of `dtype` holds for `value`.
/// The value is rounded to the dtype first, so constants that round to
/// the same element are one node.
pub(crate) fn literal_for(value: f64, dtype: DType) -> Literal {
    let value = crate::interp::round_to(value, dtype);
    if dtype.is_float() {
        Literal::Float(value.to_bits())
    } else if dtype == DType::Bool {
        Literal::Bool(value != 0.0)
    } else {
        Literal::Int(value as i64)
    }
}

/// Turns a user name into an MLIR identifier suffix (letters, digits, `._-`).
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("v{s}")
    } else {
        s
    }
}
