//! Shape ops: broadcast_in_dim, reshape, transpose, concatenate.

use crate::error::shape_err;
use crate::op::Op;
use crate::{Builder, Result, TensorType, Value};

impl Builder {
    /// `stablehlo.broadcast_in_dim`: operand dimension `i` becomes output
    /// dimension `dims[i]` (strictly increasing); its size must be 1 or equal.
    pub fn broadcast_in_dim(&mut self, x: Value, out_dims: &[i64], dims: &[i64]) -> Result<Value> {
        let ty = self.check("broadcast_in_dim", x)?;
        let ok = dims.len() == ty.rank()
            && dims.windows(2).all(|w| w[0] < w[1])
            && dims.iter().zip(&ty.dims).all(|(&d, &s)| {
                d >= 0 && (d as usize) < out_dims.len() && (s == 1 || s == out_dims[d as usize])
            });
        if !ok {
            return shape_err(
                "broadcast_in_dim",
                &[ty],
                format!(
                    "dims {dims:?} mapping each operand dimension (size 1 or equal) into output {out_dims:?}"
                ),
            );
        }
        if out_dims == ty.dims.as_slice() {
            return Ok(x);
        }
        let out = TensorType::new(ty.dtype, out_dims);
        Ok(self.push(Op::Broadcast(x, dims.to_vec()), out))
    }

    /// `stablehlo.reshape` to `dims` (same number of elements).
    pub fn reshape(&mut self, x: Value, dims: &[i64]) -> Result<Value> {
        let ty = self.check("reshape", x)?;
        if dims.iter().any(|&d| d < 0) || dims.iter().product::<i64>() != ty.numel() {
            return shape_err(
                "reshape",
                &[ty],
                format!("a target {dims:?} with {} elements", ty.numel()),
            );
        }
        if dims == ty.dims.as_slice() {
            return Ok(x);
        }
        let out = TensorType::new(ty.dtype, dims);
        Ok(self.push(Op::Reshape(x), out))
    }

    /// `stablehlo.transpose`: output dimension `i` is operand dimension `perm[i]`.
    pub fn transpose(&mut self, x: Value, perm: &[i64]) -> Result<Value> {
        let ty = self.check("transpose", x)?;
        if !is_permutation(perm, ty.rank()) {
            return shape_err(
                "transpose",
                &[ty],
                format!("a permutation of 0..{}, got {perm:?}", ty.rank()),
            );
        }
        if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
            return Ok(x);
        }
        let out = TensorType::new(
            ty.dtype,
            perm.iter()
                .map(|&p| ty.dims[p as usize])
                .collect::<Vec<_>>(),
        );
        Ok(self.push(Op::Transpose(x, perm.to_vec()), out))
    }

    /// `stablehlo.concatenate` along `dim`; all other dimensions must match.
    pub fn concatenate(&mut self, xs: &[Value], dim: usize) -> Result<Value> {
        let mut tys = Vec::with_capacity(xs.len());
        for &x in xs {
            tys.push(self.check("concatenate", x)?.clone());
        }
        let Some(first) = tys.first() else {
            return shape_err("concatenate", &[], "at least one operand");
        };
        let ok = dim < first.rank()
            && tys.iter().all(|t| {
                t.dtype == first.dtype
                    && t.rank() == first.rank()
                    && (0..t.rank()).all(|d| d == dim || t.dims[d] == first.dims[d])
            });
        if !ok {
            let refs: Vec<&TensorType> = tys.iter().collect();
            return shape_err(
                "concatenate",
                &refs,
                format!("same dtype and dimensions except dimension {dim}"),
            );
        }
        if xs.len() == 1 {
            return Ok(xs[0]);
        }
        let mut out = first.clone();
        out.dims[dim] = tys.iter().map(|t| t.dims[dim]).sum();
        Ok(self.push(Op::Concat(xs.to_vec(), dim as i64), out))
    }
}

pub(crate) fn is_permutation(perm: &[i64], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm.iter().all(|&p| {
            let ok = p >= 0 && (p as usize) < rank && !seen[p as usize];
            if ok {
                seen[p as usize] = true;
            }
            ok
        })
}
