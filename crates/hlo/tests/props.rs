//! Property tests: random compositions and random `dot_general` layouts,
//! each checked against central finite differences.

mod common;

use common::{Rng, check_grad, f64_in};
use hlo::{Builder, DotDims, Result, Value};
use proptest::prelude::*;

/// Applies op `k` to values from `pool`, keeping the pool's common shape.
fn apply(b: &mut Builder, pool: &mut Vec<Value>, k: u8, i: usize, j: usize) -> Result<()> {
    let x = pool[i % pool.len()];
    let y = pool[j % pool.len()];
    let dims = b.dims(x).to_vec();
    let r = dims.len() as i64;
    let v = match k % 12 {
        0 => b.tanh(x)?,
        1 => b.sin(x)?,
        2 => b.mul(x, y)?,
        3 => b.add(x, y)?,
        4 => b.sub(x, y)?,
        5 => b.max(x, y)?,
        6 => {
            let t = b.logistic(x)?;
            b.mul_scalar(t, 1.5)?
        }
        7 => {
            // There and back through a transpose.
            let perm: Vec<i64> = (0..r).rev().collect();
            let t = b.transpose(x, &perm)?;
            let t = b.cos(t)?;
            b.transpose(t, &perm)?
        }
        8 => {
            // Sum over the first axis, broadcast back.
            let s = b.sum(x, &[0])?;
            let map: Vec<i64> = (1..r).collect();
            b.broadcast_in_dim(s, &dims, &map)?
        }
        9 => {
            // Drop the first row and pad it back with a zero edge.
            if dims[0] < 2 {
                b.neg(x)?
            } else {
                let lo = vec![0; dims.len()];
                let mut st = lo.clone();
                st[0] = 1;
                let t = b.slice(x, &st, &dims, &vec![1; dims.len()])?;
                let z = b.scalar(0.0, b.dtype(x));
                b.pad(t, z, &st, &lo, &lo)?
            }
        }
        10 => b.softmax(x, r - 1)?,
        _ => {
            let t = b.tanh(x)?;
            b.exp(t)?
        }
    };
    pool.push(v);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_compositions_match_finite_differences(
        dims in prop::collection::vec(1i64..4, 1..4),
        ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..8),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let inputs = vec![f64_in(&mut rng, &dims, -1.0, 1.0), f64_in(&mut rng, &dims, -1.0, 1.0)];
        check_grad("composition", inputs, |b, x| {
            let mut pool = x.to_vec();
            for &(k, i, j) in &ops {
                apply(b, &mut pool, k, i, j)?;
            }
            Ok(*pool.last().expect("non-empty"))
        });
    }

    #[test]
    fn random_dot_general_layouts_match_finite_differences(
        nb in 0usize..2, nc in 0usize..3, nl in 0usize..2, nr in 0usize..2,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let size = |rng: &mut Rng| 1 + (rng.uniform() * 3.0) as i64;
        let batch: Vec<i64> = (0..nb).map(|_| size(&mut rng)).collect();
        let contract: Vec<i64> = (0..nc).map(|_| size(&mut rng)).collect();
        // Role of each operand dimension: (kind, index within kind), shuffled.
        let mut shuffle = |roles: &mut Vec<(u8, usize)>| {
            for i in (1..roles.len()).rev() {
                roles.swap(i, (rng.uniform() * (i + 1) as f64) as usize);
            }
        };
        let mut lroles: Vec<(u8, usize)> = (0..nb).map(|i| (0, i)).chain((0..nc).map(|i| (1, i))).chain((0..nl).map(|i| (2, i))).collect();
        let mut rroles: Vec<(u8, usize)> = (0..nb).map(|i| (0, i)).chain((0..nc).map(|i| (1, i))).chain((0..nr).map(|i| (2, i))).collect();
        shuffle(&mut lroles);
        shuffle(&mut rroles);
        let dims_of = |roles: &[(u8, usize)], free: i64| -> Vec<i64> {
            roles.iter().map(|&(k, i)| match k { 0 => batch[i], 1 => contract[i], _ => free + i as i64 }).collect()
        };
        let pos = |roles: &[(u8, usize)], kind: u8, n: usize| -> Vec<i64> {
            (0..n).map(|i| roles.iter().position(|&r| r == (kind, i)).expect("role") as i64).collect()
        };
        let spec = DotDims {
            lhs_batch: pos(&lroles, 0, nb),
            rhs_batch: pos(&rroles, 0, nb),
            lhs_contract: pos(&lroles, 1, nc),
            rhs_contract: pos(&rroles, 1, nc),
        };
        let mut rng2 = Rng::new(seed ^ 1);
        let l = f64_in(&mut rng2, &dims_of(&lroles, 2), -1.0, 1.0);
        let r = f64_in(&mut rng2, &dims_of(&rroles, 1), -1.0, 1.0);
        check_grad("dot_layout", vec![l, r], |b, x| b.dot_general(x[0], x[1], spec.clone()));
    }
}
