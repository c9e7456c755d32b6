//! Reverse-mode automatic differentiation over the graph.

use std::collections::HashMap;

use crate::builder::NO_REGION;
use crate::op::Op;
use crate::remat::RematPolicy;
use crate::{Builder, Error, Result, Value, vjp};

impl Builder {
    /// Gradients of the scalar float `loss` with respect to each of `wrt`,
    /// added to this program as new nodes (the backward pass). Values that
    /// `loss` does not depend on get zeros; integer and boolean paths carry
    /// no gradient. Remat regions (see [`Builder::remat`]) are replayed as
    /// their policy says. Must not be called inside a remat region.
    pub fn grad(&mut self, loss: Value, wrt: &[Value]) -> Result<Vec<Value>> {
        let lt = self.check("grad", loss)?;
        if lt.rank() != 0 || !lt.dtype.is_float() {
            return Err(Error::NonScalarLoss(lt.clone()));
        }
        if self.current_region != NO_REGION {
            return Err(Error::Invalid {
                op: "grad",
                message: "cannot differentiate inside a remat region".into(),
            });
        }
        let one = self.constant(1.0, lt.clone());
        self.backprop(&[(loss, one)], wrt)
    }

    /// Reverse-mode sweep from several outputs with given cotangents
    /// (`seeds`: `(output, cotangent)`, same types) to `wrt`.
    pub(crate) fn backprop(
        &mut self,
        seeds: &[(Value, Value)],
        wrt: &[Value],
    ) -> Result<Vec<Value>> {
        for &w in wrt {
            self.check("grad", w)?;
        }
        let roots: Vec<Value> = seeds.iter().map(|s| s.0).collect();
        let n = roots.iter().map(|r| r.index() + 1).max().unwrap_or(0);
        let active = self.active_nodes(&roots, wrt);
        let mut ct: Vec<Option<Value>> = vec![None; n];
        for &(r, g) in seeds {
            if active[r.index()] {
                ct[r.index()] = Some(match ct[r.index()] {
                    Some(prev) => self.add(prev, g)?,
                    None => g,
                });
            }
        }
        // Cotangents of the results of multi-result nodes (scans), by node.
        let mut multi: HashMap<usize, Vec<Option<Value>>> = HashMap::new();
        let mut remap: HashMap<Value, Value> = HashMap::new();
        let mut replayed = vec![false; self.regions.len()];
        for i in (0..n).rev() {
            if !active[i] || (ct[i].is_none() && !multi.contains_key(&i)) {
                continue;
            }
            let region = self.nodes[i].region;
            if region != NO_REGION && !replayed[region as usize] {
                replayed[region as usize] = true;
                if self.regions[region as usize].policy != RematPolicy::None {
                    self.replay(region as usize, &mut ct, &mut remap)?;
                }
            }
            let op = self.nodes[i].op.clone();
            if let Op::Project(parent, k) = op
                && matches!(self.nodes[parent.index()].op, Op::Scan(..))
            {
                let n_results = self.scan_results(parent);
                let slot = multi
                    .entry(parent.index())
                    .or_insert_with(|| vec![None; n_results]);
                slot[k] = ct[i];
                continue;
            }
            let scope = self.nodes[i].scope;
            let saved_scope = self.set_scope_id(scope);
            let contribs = match &op {
                Op::Scan(body, inputs) => {
                    let cts = multi.remove(&i).unwrap_or_default();
                    crate::scan::scan_vjp(self, self.value(i), body, inputs, &cts, &remap)
                }
                _ => vjp::vjp(
                    self,
                    &op,
                    self.value(i),
                    // invariant: the loop continues above when `ct[i]` is None.
                    ct[i].expect("checked above"),
                    &remap,
                ),
            };
            self.set_scope_id(saved_scope);
            for (o, c) in contribs? {
                if !active[o.index()] {
                    continue;
                }
                if self.ty(o) != self.ty(c) {
                    return Err(Error::Invalid {
                        op: op.kind(),
                        message: format!(
                            "internal: cotangent {} for operand {}",
                            self.ty(c),
                            self.ty(o)
                        ),
                    });
                }
                ct[o.index()] = Some(match ct[o.index()] {
                    Some(prev) => self.add(prev, c)?,
                    None => c,
                });
            }
        }
        Ok(wrt
            .iter()
            .map(|&w| match ct.get(w.index()).copied().flatten() {
                Some(g) => g,
                None => self.zeros_like(w),
            })
            .collect())
    }

    /// Nodes on a float path from one of `wrt` to one of `roots`.
    fn active_nodes(&self, roots: &[Value], wrt: &[Value]) -> Vec<bool> {
        let n = roots.iter().map(|r| r.index() + 1).max().unwrap_or(0);
        let carries =
            |b: &Builder, i: usize| b.nodes[i].op.is_multi() || b.nodes[i].ty.dtype.is_float();
        let mut depends = vec![false; n];
        for &w in wrt {
            if w.index() < n && carries(self, w.index()) {
                depends[w.index()] = true;
            }
        }
        for i in 0..n {
            if !depends[i] && carries(self, i) {
                depends[i] = self.nodes[i]
                    .op
                    .operands()
                    .iter()
                    .any(|o| depends[o.index()]);
            }
        }
        let mut reach = vec![false; n];
        for r in roots {
            reach[r.index()] = true;
        }
        for i in (0..n).rev() {
            if reach[i] && depends[i] {
                for o in self.nodes[i].op.operands() {
                    reach[o.index()] = true;
                }
            }
        }
        (0..n).map(|i| reach[i] && depends[i]).collect()
    }

    /// Replays remat region `r` for the backward pass: its inputs and the
    /// cotangents flowing into it go through one optimization barrier.
    fn replay(
        &mut self,
        r: usize,
        ct: &mut [Option<Value>],
        remap: &mut HashMap<Value, Value>,
    ) -> Result<()> {
        let region = self.regions[r].clone();
        let free = |op: &Op| matches!(op, Op::Constant(_) | Op::Iota(_));
        let keep = |b: &Builder, i: usize| {
            let op = &b.nodes[i].op;
            i < region.start
                || region.saves(op)
                || free(op)
                || matches!(op, Op::Barrier(_) | Op::Scan(..) | Op::Project(..))
        };
        let mut inputs: Vec<Value> = Vec::new();
        for i in region.start..region.end {
            if keep(self, i) {
                continue;
            }
            for o in self.nodes[i].op.operands() {
                if keep(self, o.index()) && !free(&self.nodes[o.index()].op) && !inputs.contains(&o)
                {
                    inputs.push(o);
                }
            }
        }
        inputs.sort_unstable();
        let cts: Vec<usize> = (region.start..region.end.min(ct.len()))
            .filter(|&i| ct[i].is_some())
            .collect();
        let mut through: Vec<Value> = inputs.clone();
        // invariant: `cts` keeps only indices whose cotangent is Some.
        through.extend(cts.iter().map(|&i| ct[i].expect("filtered")));
        let outs = self.optimization_barrier(&through)?;
        for (v, o) in inputs.iter().zip(&outs) {
            remap.insert(*v, *o);
        }
        for (&i, &o) in cts.iter().zip(&outs[inputs.len()..]) {
            ct[i] = Some(o);
        }
        for i in region.start..region.end {
            if keep(self, i) {
                continue;
            }
            let node = self.nodes[i].clone();
            let ops: Vec<Value> = node
                .op
                .operands()
                .iter()
                .map(|o| *remap.get(o).unwrap_or(o))
                .collect();
            let saved_scope = self.set_scope_id(node.scope);
            let v = self.push(node.op.with_operands(&ops), node.ty);
            self.set_scope_id(saved_scope);
            remap.insert(self.value(i), v);
        }
        Ok(())
    }

    /// True when `v` can carry a cotangent.
    pub(crate) fn is_float(&self, v: Value) -> bool {
        self.dtype(v).is_float()
    }
}
