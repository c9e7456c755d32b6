//! Indexing ops: slice, dynamic_slice, dynamic_update_slice, pad, gather, scatter.

use crate::error::shape_err;
use crate::op::Op;
use crate::{Builder, DType, Result, TensorType, Value};

impl Builder {
    /// `stablehlo.slice`: elements `start[d] .. limit[d]` with step `stride[d]`.
    pub fn slice(
        &mut self,
        x: Value,
        start: &[i64],
        limit: &[i64],
        stride: &[i64],
    ) -> Result<Value> {
        let ty = self.check("slice", x)?;
        let r = ty.rank();
        let ok = start.len() == r
            && limit.len() == r
            && stride.len() == r
            && (0..r).all(|d| {
                start[d] >= 0 && start[d] <= limit[d] && limit[d] <= ty.dims[d] && stride[d] >= 1
            });
        if !ok {
            return shape_err(
                "slice",
                &[ty],
                format!("0 <= start {start:?} <= limit {limit:?} <= dims, strides {stride:?} >= 1"),
            );
        }
        let dims: Vec<i64> = (0..r)
            .map(|d| (limit[d] - start[d] + stride[d] - 1) / stride[d])
            .collect();
        if dims == ty.dims {
            return Ok(x);
        }
        let out = TensorType::new(ty.dtype, dims);
        Ok(self.push(
            Op::Slice(x, start.to_vec(), limit.to_vec(), stride.to_vec()),
            out,
        ))
    }

    /// Elements `start .. start + len` along one axis (stride 1).
    pub fn slice_axis(&mut self, x: Value, axis: usize, start: i64, len: i64) -> Result<Value> {
        let dims = self.check("slice", x)?.dims.clone();
        let mut lo = vec![0; dims.len()];
        let mut hi = dims.clone();
        if axis >= dims.len() {
            return shape_err(
                "slice",
                &[self.ty(x)],
                format!("axis {axis} within the rank"),
            );
        }
        lo[axis] = start;
        hi[axis] = start + len;
        self.slice(x, &lo, &hi, &vec![1; dims.len()])
    }

    /// `stablehlo.dynamic_slice`: a `sizes` block at run-time `starts` (one
    /// scalar integer per dimension; clamped into range like XLA does).
    pub fn dynamic_slice(&mut self, x: Value, starts: &[Value], sizes: &[i64]) -> Result<Value> {
        let ty = self.check("dynamic_slice", x)?.clone();
        let ok = self.check_starts("dynamic_slice", starts, ty.rank())?
            && sizes.len() == ty.rank()
            && sizes.iter().zip(&ty.dims).all(|(&s, &d)| s >= 0 && s <= d);
        if !ok {
            return shape_err(
                "dynamic_slice",
                &[&ty],
                format!("one scalar integer start per dim, sizes {sizes:?}"),
            );
        }
        let out = TensorType::new(ty.dtype, sizes);
        Ok(self.push(Op::DynamicSlice(x, starts.to_vec(), sizes.to_vec()), out))
    }

    /// `stablehlo.dynamic_update_slice`: `x` with `update` written at `starts`.
    pub fn dynamic_update_slice(
        &mut self,
        x: Value,
        update: Value,
        starts: &[Value],
    ) -> Result<Value> {
        let ty = self.check("dynamic_update_slice", x)?.clone();
        let tu = self.check("dynamic_update_slice", update)?.clone();
        let ok = self.check_starts("dynamic_update_slice", starts, ty.rank())?
            && tu.dtype == ty.dtype
            && tu.rank() == ty.rank()
            && tu.dims.iter().zip(&ty.dims).all(|(u, d)| u <= d);
        if !ok {
            return shape_err(
                "dynamic_update_slice",
                &[&ty, &tu],
                "an update no larger than the operand, one start per dim",
            );
        }
        Ok(self.push(Op::DynamicUpdateSlice(x, update, starts.to_vec()), ty))
    }

    fn check_starts(&self, op: &'static str, starts: &[Value], rank: usize) -> Result<bool> {
        let mut ok = starts.len() == rank;
        let mut dt = None;
        for &s in starts {
            let t = self.check(op, s)?;
            ok &= t.rank() == 0 && t.dtype.is_int() && dt.is_none_or(|d| d == t.dtype);
            dt = Some(t.dtype);
        }
        Ok(ok)
    }

    /// `stablehlo.pad` with a scalar `value`: `low`/`high` edge padding
    /// (negative crops) and `interior` padding between elements.
    pub fn pad(
        &mut self,
        x: Value,
        value: Value,
        low: &[i64],
        high: &[i64],
        interior: &[i64],
    ) -> Result<Value> {
        let ty = self.check("pad", x)?.clone();
        let tv = self.check("pad", value)?;
        let r = ty.rank();
        let ok = tv.rank() == 0
            && tv.dtype == ty.dtype
            && low.len() == r
            && high.len() == r
            && interior.len() == r
            && interior.iter().all(|&i| i >= 0);
        let dims: Vec<i64> = if ok {
            (0..r)
                .map(|d| low[d] + high[d] + ty.dims[d] + (ty.dims[d] - 1).max(0) * interior[d])
                .collect()
        } else {
            vec![]
        };
        if !ok || dims.iter().any(|&d| d < 0) {
            return shape_err(
                "pad",
                &[&ty, tv],
                "a scalar padding value of the same dtype, one low/high/interior per dim",
            );
        }
        Ok(self.push(
            Op::Pad(x, value, low.to_vec(), high.to_vec(), interior.to_vec()),
            TensorType::new(ty.dtype, dims),
        ))
    }

    /// Takes rows of `table` (`[V, D...]`) at integer `indices` (`[I...]`):
    /// the result is `[I..., D...]` (an embedding lookup, `stablehlo.gather`).
    /// Out-of-range indices are clamped, as XLA does (their gradient, a
    /// scatter, drops them instead: keep indices in range).
    pub fn take_rows(&mut self, table: Value, indices: Value) -> Result<Value> {
        let tt = self.check("gather", table)?.clone();
        let ti = self.check("gather", indices)?;
        if tt.rank() == 0 || !ti.dtype.is_int() {
            return shape_err(
                "gather",
                &[&tt, ti],
                "a table of rank >= 1 and integer indices",
            );
        }
        let mut dims = ti.dims.clone();
        dims.extend_from_slice(&tt.dims[1..]);
        Ok(self.push(Op::Gather(table, indices), TensorType::new(tt.dtype, dims)))
    }

    /// Adds `updates` (`[I..., D...]`) into rows `indices` (`[I...]`) of
    /// `operand` (`[V, D...]`), summing duplicates (`stablehlo.scatter` with
    /// an add combiner): the gradient of [`Builder::take_rows`].
    /// Out-of-range indices are skipped, as XLA does.
    pub fn scatter_add_rows(
        &mut self,
        operand: Value,
        indices: Value,
        updates: Value,
    ) -> Result<Value> {
        let to = self.check("scatter", operand)?.clone();
        let ti = self.check("scatter", indices)?.clone();
        let tu = self.check("scatter", updates)?;
        let mut want = ti.dims.clone();
        if to.rank() > 0 {
            want.extend_from_slice(&to.dims[1..]);
        }
        if to.rank() == 0
            || !ti.dtype.is_int()
            || tu.dtype != to.dtype
            || tu.dims != want
            || to.dtype == DType::Bool
        {
            return shape_err(
                "scatter",
                &[&to, &ti, tu],
                format!("operand [V, D...], integer indices, updates {want:?}"),
            );
        }
        Ok(self.push(Op::ScatterAdd(operand, indices, updates), to))
    }
}
