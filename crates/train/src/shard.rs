//! Host arrays to per-device shards and back. Partition `p` of the SPMD
//! program is mesh position `p` in row-major `[data, fsdp, tensor]` order;
//! a dimension split over mesh axes `[a1, a2]` is cut into `|a1| * |a2|`
//! pieces indexed with `a1` major, as Shardy lays them out.

use std::ops::Range;

use mesh::Mesh;

/// The mesh coordinate of partition `p` along each axis of `mesh.axes()`.
fn coords(mesh: &Mesh, p: usize) -> [i64; 3] {
    let (f, t) = (mesh.fsdp, mesh.tensor);
    let p = p as i64;
    [p / (f * t), (p / t) % f, p % t]
}

/// The index range of every dimension that partition `p` holds.
pub fn shard_ranges(
    mesh: &Mesh,
    shape: &[usize],
    axes: &[Vec<String>],
    p: usize,
) -> Vec<Range<usize>> {
    let c = coords(mesh, p);
    let names = mesh.axes();
    shape
        .iter()
        .zip(axes)
        .map(|(&dim, dim_axes)| {
            let (mut index, mut count) = (0i64, 1i64);
            for a in dim_axes {
                let k = names
                    .iter()
                    .position(|n| n.0 == a)
                    // invariant: slot axes are the mesh axes the plan resolved from the rules.
                    .expect("rules name mesh axes");
                index = index * names[k].1 + c[k];
                count *= names[k].1;
            }
            let len = dim / count as usize;
            index as usize * len..(index as usize + 1) * len
        })
        .collect()
}

/// Row-major strides.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Visits every contiguous innermost run of the box `ranges` in a tensor of
/// `shape`: `f(offset in the full tensor, offset in the box, run length)`.
fn for_each_run(shape: &[usize], ranges: &[Range<usize>], mut f: impl FnMut(usize, usize, usize)) {
    if shape.is_empty() {
        f(0, 0, 1);
        return;
    }
    let st = strides(shape);
    let r = shape.len();
    let run = ranges[r - 1].len();
    let outer: Vec<usize> = ranges[..r - 1].iter().map(|x| x.len()).collect();
    let total: usize = outer.iter().product();
    let mut idx = vec![0usize; r - 1];
    for n in 0..total {
        let full: usize = (0..r - 1)
            .map(|i| (ranges[i].start + idx[i]) * st[i])
            .sum::<usize>()
            + ranges[r - 1].start;
        f(full, n * run, run);
        for i in (0..r - 1).rev() {
            idx[i] += 1;
            if idx[i] < outer[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

/// Copies the box `ranges` out of a row-major tensor.
pub fn extract<T: Copy>(data: &[T], shape: &[usize], ranges: &[Range<usize>]) -> Vec<T> {
    let n: usize = ranges.iter().map(|r| r.len()).product();
    let mut out = Vec::with_capacity(n);
    for_each_run(shape, ranges, |full, _, len| {
        out.extend_from_slice(&data[full..full + len])
    });
    out
}

/// Writes `shard` into the box `ranges` of a row-major tensor.
pub fn insert<T: Copy>(data: &mut [T], shape: &[usize], ranges: &[Range<usize>], shard: &[T]) {
    for_each_run(shape, ranges, |full, local, len| {
        data[full..full + len].copy_from_slice(&shard[local..local + len])
    });
}

/// The intersection of two boxes, if they overlap.
pub fn overlap(a: &[Range<usize>], b: &[Range<usize>]) -> Option<Vec<Range<usize>>> {
    let r: Vec<Range<usize>> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.start.max(y.start)..x.end.min(y.end))
        .collect();
    r.iter().all(|x| x.start < x.end).then_some(r)
}

/// Copies the overlap of box `src_box` (its elements row-major through
/// `src(i)`) into `dst`, which holds box `dst_box` row-major; both boxes
/// are in the coordinates of one global tensor.
pub fn copy_overlap(
    src: impl Fn(usize) -> f32,
    src_box: &[Range<usize>],
    dst: &mut [f32],
    dst_box: &[Range<usize>],
) {
    let Some(common) = overlap(src_box, dst_box) else {
        return;
    };
    let src_shape: Vec<usize> = src_box.iter().map(|r| r.len()).collect();
    let dst_shape: Vec<usize> = dst_box.iter().map(|r| r.len()).collect();
    let local = |b: &[Range<usize>]| -> Vec<Range<usize>> {
        common
            .iter()
            .zip(b)
            .map(|(c, o)| c.start - o.start..c.end - o.start)
            .collect()
    };
    let (in_src, in_dst) = (local(src_box), local(dst_box));
    let mut runs = Vec::new();
    for_each_run(&src_shape, &in_src, |full, _, len| runs.push((full, len)));
    let mut at = 0;
    for_each_run(&dst_shape, &in_dst, |full, _, len| {
        let (from, n) = runs[at];
        debug_assert_eq!(n, len);
        for k in 0..len {
            dst[full + k] = src(from + k);
        }
        at += 1;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|d| d.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn shards_tile_the_tensor_exactly_once_per_replica_group() {
        let m = mesh::MeshConfig {
            data: 2,
            fsdp: 2,
            tensor: 2,
        }
        .resolve(8)
        .unwrap();
        let shape = [8, 6];
        let a = axes(&[&["data", "fsdp"], &["tensor"]]);
        let data: Vec<i32> = (0..48).collect();
        let mut back = vec![-1; 48];
        for p in 0..8 {
            let r = shard_ranges(&m, &shape, &a, p);
            assert_eq!(r[0].len(), 2);
            assert_eq!(r[1].len(), 3);
            let s = extract(&data, &shape, &r);
            insert(&mut back, &shape, &r, &s);
        }
        assert_eq!(back, data);
        // Partition 5 = (data 1, fsdp 0, tensor 1): rows 4..6, cols 3..6.
        assert_eq!(shard_ranges(&m, &shape, &a, 5), vec![4..6, 3..6]);
    }

    #[test]
    fn replicated_dims_are_whole() {
        let m = mesh::MeshConfig {
            data: 1,
            fsdp: 4,
            tensor: 2,
        }
        .resolve(8)
        .unwrap();
        let r = shard_ranges(&m, &[16, 4], &axes(&[&[], &["fsdp"]]), 7);
        assert_eq!(r, vec![0..16, 3..4]);
        assert_eq!(extract(&[7.0f32], &[], &[]), vec![7.0]);
    }

    #[test]
    fn overlaps_copy_between_boxes() {
        // A 4x6 tensor; a piece holding rows 0..2, cols 2..6, read into the
        // box rows 1..4, cols 0..4.
        let full: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let piece_box = [0..2, 2..6];
        let piece = extract(&full, &[4, 6], &piece_box);
        let want_box = [1..4, 0..4];
        let mut out = vec![-1.0; 12];
        copy_overlap(|i| piece[i], &piece_box, &mut out, &want_box);
        // Only (row 1, cols 2..4) overlaps: full values 8, 9.
        let expect = [-1., -1., 8., 9., -1., -1., -1., -1., -1., -1., -1., -1.];
        assert_eq!(out, expect);
        assert_eq!(overlap(&[0..2, 0..2], &[2..4, 0..2]), None);
    }
}
