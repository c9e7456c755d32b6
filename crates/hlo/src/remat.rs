//! Rematerialization: regions whose activations are recomputed in the
//! backward pass, and `optimization_barrier`.
//!
//! A region is the contiguous run of nodes added inside [`Builder::remat`].
//! When [`Builder::grad`] reaches a region, it wraps the values the region
//! reads from outside (and, under [`RematPolicy::SaveMatmuls`], the region's
//! `dot_general` outputs) together with the cotangents flowing in, in one
//! `stablehlo.optimization_barrier`, and replays the region's other nodes
//! from the barrier's results. The barrier ties the replay to the backward
//! pass, so XLA can neither merge it with the forward computation (CSE) nor
//! hoist it there; only the barrier's inputs stay alive between the passes.

use crate::op::Op;
use crate::{Builder, Error, Result, Value};

/// What a remat region keeps from the forward pass (MaxText's names in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RematPolicy {
    /// Keep every activation; recompute nothing (`minimal`/no remat).
    None,
    /// Keep only the region's inputs; recompute everything (`full`).
    Full,
    /// Keep the region's inputs and its matmul (`dot_general`) outputs;
    /// recompute the cheap elementwise work (`save_dot_except_mlp`-like,
    /// "save only matmul outputs").
    SaveMatmuls,
}

/// A remat region: nodes `start..end` and their policy.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub policy: RematPolicy,
    pub start: usize,
    pub end: usize,
}

impl Region {
    /// True when the node is kept from the forward pass instead of replayed.
    pub(crate) fn saves(&self, op: &Op) -> bool {
        match self.policy {
            RematPolicy::None => true,
            RematPolicy::Full => matches!(op, Op::Parameter(_)),
            RematPolicy::SaveMatmuls => matches!(op, Op::Parameter(_) | Op::Dot(..)),
        }
    }
}

impl Builder {
    /// Runs `f` as one remat region (typically one transformer layer). The
    /// forward computation is unchanged; the backward pass built by
    /// [`Builder::grad`] recomputes what `policy` does not save.
    /// Regions cannot nest.
    ///
    /// When the backward pass reaches the region, the values it reads from
    /// outside (plus, under [`RematPolicy::SaveMatmuls`], its `dot_general`
    /// outputs) and the cotangents flowing into it pass through one
    /// `stablehlo.optimization_barrier`, and the region is replayed from the
    /// barrier's results. XLA can then neither merge the replay with the
    /// forward pass nor hoist it there, so only the barrier's inputs stay
    /// alive between the passes. Replayed nodes that no gradient needs are
    /// not emitted.
    pub fn remat<T>(
        &mut self,
        policy: RematPolicy,
        f: impl FnOnce(&mut Builder) -> Result<T>,
    ) -> Result<T> {
        let id = self.enter_region(policy)?;
        let out = f(self);
        self.leave_region(id);
        out
    }

    /// The identity, with no gradient: [`Builder::grad`] treats `x` as a
    /// constant here (JAX's `stop_gradient`). Emits no instruction.
    pub fn stop_gradient(&mut self, x: Value) -> Result<Value> {
        let ty = self.check("stop_gradient", x)?.clone();
        Ok(self.push(Op::StopGradient(x), ty))
    }

    /// `stablehlo.optimization_barrier`: returns its operands unchanged, but
    /// XLA may not move computation across it or merge values through it.
    pub fn optimization_barrier(&mut self, xs: &[Value]) -> Result<Vec<Value>> {
        let mut tys = Vec::with_capacity(xs.len());
        for &x in xs {
            tys.push(self.check("optimization_barrier", x)?.clone());
        }
        let Some(first) = tys.first().cloned() else {
            return Err(Error::Invalid {
                op: "optimization_barrier",
                message: "needs at least one operand".into(),
            });
        };
        let node = self.push_raw(Op::Barrier(xs.to_vec()), first);
        Ok(tys
            .into_iter()
            .enumerate()
            .map(|(i, t)| self.push_raw(Op::Project(node, i), t))
            .collect())
    }
}
