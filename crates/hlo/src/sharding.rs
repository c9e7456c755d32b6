//! Device meshes and per-value shardings, emitted as Shardy attributes.

use std::fmt::{self, Write};

use crate::{Error, Result, TensorType};

/// A logical device mesh: ordered named axes with sizes. The product of the
/// sizes is the number of partitions the program is compiled for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mesh {
    /// `(name, size)` per axis, major to minor.
    pub axes: Vec<(String, i64)>,
}

impl Mesh {
    /// A mesh from `(name, size)` pairs; names must be unique and sizes >= 1.
    pub fn new<S: Into<String>>(axes: impl IntoIterator<Item = (S, i64)>) -> Result<Mesh> {
        let axes: Vec<(String, i64)> = axes.into_iter().map(|(n, s)| (n.into(), s)).collect();
        for (i, (name, size)) in axes.iter().enumerate() {
            let bad_name =
                name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if bad_name || *size < 1 || axes[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Invalid {
                    op: "Mesh::new",
                    message: format!(
                        "axis {name:?} of size {size}: names must be unique identifiers, sizes >= 1"
                    ),
                });
            }
        }
        Ok(Mesh { axes })
    }

    /// Total number of devices.
    pub fn num_devices(&self) -> i64 {
        self.axes.iter().map(|(_, s)| s).product()
    }

    /// Size of the named axis, if present.
    pub fn axis_size(&self, name: &str) -> Option<i64> {
        self.axes.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }

    /// `<["data"=2, "model"=4]>`
    pub(crate) fn to_mlir(&self) -> String {
        let mut s = String::from("<[");
        for (i, (n, size)) in self.axes.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "\"{n}\"={size}");
        }
        s.push_str("]>");
        s
    }
}

/// How one value is laid out over the mesh: for each tensor dimension, the
/// mesh axes it is split over (major first); an empty list means that
/// dimension is replicated. Axes not named anywhere replicate the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sharding {
    /// Mesh axes per tensor dimension.
    pub dims: Vec<Vec<String>>,
}

impl Sharding {
    /// Fully replicated sharding of a rank-`rank` tensor.
    pub fn replicated(rank: usize) -> Sharding {
        Sharding {
            dims: vec![Vec::new(); rank],
        }
    }

    /// One mesh axis per dimension, `""` for a replicated dimension:
    /// `Sharding::new(["data", ""])`.
    pub fn new<'a>(dims: impl IntoIterator<Item = &'a str>) -> Sharding {
        Sharding {
            dims: dims
                .into_iter()
                .map(|d| {
                    if d.is_empty() {
                        Vec::new()
                    } else {
                        vec![d.to_string()]
                    }
                })
                .collect(),
        }
    }

    /// Several mesh axes per dimension: `Sharding::multi([&["data", "fsdp"][..], &[]])`.
    pub fn multi<'a>(dims: impl IntoIterator<Item = &'a [&'a str]>) -> Sharding {
        Sharding {
            dims: dims
                .into_iter()
                .map(|d| d.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    /// True when no dimension is split.
    pub fn is_replicated(&self) -> bool {
        self.dims.iter().all(|d| d.is_empty())
    }

    /// The block of a `dims`-shaped tensor that device `device` holds:
    /// `(start, size)` per dimension. Devices are numbered row-major over
    /// the mesh axes (the first axis is the most major), as Shardy does.
    /// Panics if the sharding names an axis that is not in `mesh` (shardings
    /// attached to a program were checked against its mesh).
    pub fn shard_bounds(&self, mesh: &Mesh, dims: &[i64], device: i64) -> Vec<(i64, i64)> {
        let mut coord = Vec::with_capacity(mesh.axes.len());
        let mut rest = device;
        for (_, size) in mesh.axes.iter().rev() {
            coord.push(rest % size);
            rest /= size;
        }
        coord.reverse();
        let pos = |name: &str| {
            mesh.axes
                .iter()
                .position(|(n, _)| n == name)
                // invariant (documented above): callers pass shardings checked against `mesh`.
                .expect("axis checked")
        };
        dims.iter()
            .zip(&self.dims)
            .map(|(&d, axes)| {
                let (mut index, mut parts) = (0, 1);
                for a in axes {
                    let k = pos(a);
                    index = index * mesh.axes[k].1 + coord[k];
                    parts *= mesh.axes[k].1;
                }
                let size = d / parts;
                (index * size, size)
            })
            .collect()
    }

    /// Checks the sharding against a mesh and the tensor it annotates.
    pub(crate) fn check(&self, mesh: Option<&Mesh>, ty: &TensorType, what: &str) -> Result<()> {
        let err = |message: String| Error::Sharding {
            what: what.to_string(),
            ty: ty.clone(),
            message,
        };
        let Some(mesh) = mesh else {
            return Err(err("no mesh declared: call Builder::set_mesh first".into()));
        };
        if self.dims.len() != ty.rank() {
            return Err(err(format!(
                "has {} dimensions, the tensor has rank {}",
                self.dims.len(),
                ty.rank()
            )));
        }
        let mut used: Vec<&str> = Vec::new();
        for (d, axes) in self.dims.iter().enumerate() {
            let mut parts = 1;
            for a in axes {
                let Some(size) = mesh.axis_size(a) else {
                    return Err(err(format!(
                        "mesh axis {a:?} is not in the mesh {}",
                        mesh.to_mlir()
                    )));
                };
                if used.contains(&a.as_str()) {
                    return Err(err(format!("mesh axis {a:?} is used twice")));
                }
                used.push(a);
                parts *= size;
            }
            if ty.dims[d] % parts != 0 {
                return Err(err(format!(
                    "dimension {d} of size {} does not divide over {parts} devices",
                    ty.dims[d]
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Sharding {
    /// `<@mesh, [{"data"}, {}]>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<@mesh, [")?;
        for (i, axes) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str("{")?;
            for (j, a) in axes.iter().enumerate() {
                if j > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "\"{a}\"")?;
            }
            f.write_str("}")?;
        }
        f.write_str("]>")
    }
}

impl crate::Builder {
    /// `sdy.sharding_constraint`: asks the partitioner to lay `x` out as
    /// `sharding` at this point. Its gradient carries the same constraint.
    pub fn sharding_constraint(
        &mut self,
        x: crate::Value,
        sharding: &Sharding,
    ) -> Result<crate::Value> {
        let ty = self.check("sharding_constraint", x)?.clone();
        sharding.check(self.mesh.as_ref(), &ty, "sharding_constraint")?;
        Ok(self.push(crate::op::Op::Constraint(x, sharding.clone()), ty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_and_sharding_text() {
        let mesh = Mesh::new([("data", 2), ("model", 4)]).unwrap();
        assert_eq!(mesh.to_mlir(), "<[\"data\"=2, \"model\"=4]>");
        assert_eq!(mesh.num_devices(), 8);
        let s = Sharding::multi([&["data", "model"][..], &[]]);
        assert_eq!(s.to_string(), "<@mesh, [{\"data\", \"model\"}, {}]>");
    }

    #[test]
    fn shard_bounds_follow_the_mesh_order() {
        let mesh = Mesh::new([("data", 2), ("model", 4)]).unwrap();
        let s = Sharding::new(["data", "model"]);
        assert_eq!(s.shard_bounds(&mesh, &[8, 8], 0), vec![(0, 4), (0, 2)]);
        assert_eq!(s.shard_bounds(&mesh, &[8, 8], 6), vec![(4, 4), (4, 2)]);
        let both = Sharding::multi([&["model", "data"][..], &[]]);
        assert_eq!(both.shard_bounds(&mesh, &[16, 3], 1), vec![(4, 2), (0, 3)]); // data 0, model 1: block 1 * 2 + 0
    }

    #[test]
    fn rejects_bad_shardings() {
        let mesh = Mesh::new([("data", 2), ("model", 4)]).unwrap();
        let ty = TensorType::f32([6, 8]);
        assert!(
            Sharding::new(["data", "model"])
                .check(Some(&mesh), &ty, "x")
                .is_ok()
        );
        assert!(
            Sharding::new(["model", ""])
                .check(Some(&mesh), &ty, "x")
                .is_err()
        ); // 6 % 4
        assert!(
            Sharding::new(["nope", ""])
                .check(Some(&mesh), &ty, "x")
                .is_err()
        );
        assert!(
            Sharding::new(["data", "data"])
                .check(Some(&mesh), &ty, "x")
                .is_err()
        );
        assert!(
            Sharding::new(["data"])
                .check(Some(&mesh), &ty, "x")
                .is_err()
        );
        assert!(Mesh::new([("a", 2), ("a", 2)]).is_err());
    }
}
