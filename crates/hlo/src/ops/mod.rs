//! The strict op set: one method per StableHLO op, checked at insertion.

mod elementwise;
mod index;
mod linalg;
mod shape;

pub(crate) use linalg::free_dims;

/// The permutation that undoes `perm`.
pub(crate) fn inverse_perm(perm: &[i64]) -> Vec<i64> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    inv
}

/// How many entries of `list` are smaller than `x` (its rank once sorted).
pub(crate) fn sorted_rank(list: &[i64], x: i64) -> i64 {
    list.iter().filter(|&&v| v < x).count() as i64
}
