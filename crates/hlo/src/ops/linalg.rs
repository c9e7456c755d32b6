//! Contractions and reductions: dot_general, reduce.

use crate::error::shape_err;
use crate::op::{DotDims, Op, ReduceKind};
use crate::{Builder, DType, Result, TensorType, Value};

impl Builder {
    /// `stablehlo.dot_general`. The result's dimensions are the batch
    /// dimensions, then the left operand's free dimensions, then the right's.
    /// Both operands must have the same dtype; so does the result.
    pub fn dot_general(&mut self, lhs: Value, rhs: Value, dims: DotDims) -> Result<Value> {
        let dtype = self.check("dot_general", lhs)?.dtype;
        self.dot_general_to(lhs, rhs, dims, dtype)
    }

    /// `stablehlo.custom_call @target(operands)` with one result of type
    /// `out`, as a typed XLA FFI call (`api_version = 4`, row-major
    /// layouts). The target must be registered with the plugin that runs
    /// the program; it has no gradient and no host evaluation.
    pub fn custom_call(
        &mut self,
        target: &str,
        operands: &[Value],
        out: TensorType,
    ) -> Result<Value> {
        let ok = !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !ok {
            return Err(crate::Error::Invalid {
                op: "custom_call",
                message: format!("target {target:?}: expected ASCII letters, digits, '_' or '.'"),
            });
        }
        for &x in operands {
            self.check("custom_call", x)?;
        }
        Ok(self.push(Op::CustomCall(target.into(), operands.to_vec()), out))
    }

    /// `dot_general` with another result dtype (e.g. bf16 operands, f32 result).
    pub fn dot_general_to(
        &mut self,
        lhs: Value,
        rhs: Value,
        dims: DotDims,
        out: DType,
    ) -> Result<Value> {
        let tl = self.check("dot_general", lhs)?.clone();
        let tr = self.check("dot_general", rhs)?.clone();
        let valid = |ds: &[i64], rank: usize| ds.iter().all(|&d| d >= 0 && (d as usize) < rank);
        let distinct = |a: &[i64], b: &[i64]| {
            let mut all: Vec<i64> = a.iter().chain(b).copied().collect();
            all.sort_unstable();
            all.windows(2).all(|w| w[0] != w[1])
        };
        let size =
            |t: &TensorType, ds: &[i64]| ds.iter().map(|&d| t.dims[d as usize]).collect::<Vec<_>>();
        let ok = tl.dtype == tr.dtype
            && tl.dtype != DType::Bool
            && dims.lhs_batch.len() == dims.rhs_batch.len()
            && dims.lhs_contract.len() == dims.rhs_contract.len()
            && valid(&dims.lhs_batch, tl.rank())
            && valid(&dims.lhs_contract, tl.rank())
            && valid(&dims.rhs_batch, tr.rank())
            && valid(&dims.rhs_contract, tr.rank())
            && distinct(&dims.lhs_batch, &dims.lhs_contract)
            && distinct(&dims.rhs_batch, &dims.rhs_contract)
            && size(&tl, &dims.lhs_batch) == size(&tr, &dims.rhs_batch)
            && size(&tl, &dims.lhs_contract) == size(&tr, &dims.rhs_contract);
        if !ok {
            return shape_err(
                "dot_general",
                &[&tl, &tr],
                format!(
                    "same dtype, batching_dims = {:?} x {:?} and contracting_dims = {:?} x {:?} of equal sizes",
                    dims.lhs_batch, dims.rhs_batch, dims.lhs_contract, dims.rhs_contract
                ),
            );
        }
        let mut out_dims = size(&tl, &dims.lhs_batch);
        out_dims.extend(size(
            &tl,
            &free_dims(tl.rank(), &dims.lhs_batch, &dims.lhs_contract),
        ));
        out_dims.extend(size(
            &tr,
            &free_dims(tr.rank(), &dims.rhs_batch, &dims.rhs_contract),
        ));
        Ok(self.push(Op::Dot(lhs, rhs, dims), TensorType::new(out, out_dims)))
    }

    /// `stablehlo.reduce` with sum, max or min over `axes` (removed from the shape).
    pub fn reduce(&mut self, x: Value, kind: ReduceKind, axes: &[i64]) -> Result<Value> {
        let ty = self.check("reduce", x)?;
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let ok = sorted.len() == axes.len()
            && sorted.iter().all(|&a| a >= 0 && (a as usize) < ty.rank())
            && (ty.dtype != DType::Bool || kind != ReduceKind::Sum);
        if !ok {
            return shape_err(
                "reduce",
                &[ty],
                format!("distinct axes within the rank, got {axes:?}"),
            );
        }
        if sorted.is_empty() {
            return Ok(x);
        }
        let dims: Vec<i64> = (0..ty.rank() as i64)
            .filter(|d| !sorted.contains(d))
            .map(|d| ty.dims[d as usize])
            .collect();
        let out = TensorType::new(ty.dtype, dims);
        Ok(self.push(Op::Reduce(x, kind, sorted), out))
    }
}

/// Dimensions of a `rank` operand that are neither batch nor contracting, ascending.
pub(crate) fn free_dims(rank: usize, batch: &[i64], contract: &[i64]) -> Vec<i64> {
    (0..rank as i64)
        .filter(|d| !batch.contains(d) && !contract.contains(d))
        .collect()
}
