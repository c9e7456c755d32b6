//! Device meshes for meshtrain: a mesh of named axes (`data`, `fsdp`,
//! `tensor`) resolved against a device count ([`MeshConfig::resolve`]),
//! the rules that map a model's logical axes onto mesh axes ([`Rules`]),
//! and the order in which physical devices fill the mesh so that each mesh
//! axis runs along a ring of the torus ([`device_order`]).
//!
//! ```
//! use mesh::{MeshConfig, Rules};
//! let m = MeshConfig { data: 2, fsdp: -1, tensor: 2 }.resolve(8).unwrap();
//! assert_eq!(m.axes(), [("data", 2), ("fsdp", 2), ("tensor", 2)]);
//! let rules = Rules::default();
//! // A [vocab, embed] embedding: vocab over tensor, embed over fsdp.
//! let dims = rules.shard(&m, &[("vocab", 1000), ("embed", 64)]);
//! assert_eq!(dims, [vec!["tensor".to_string()], vec!["fsdp".to_string()]]);
//! ```
#![deny(missing_docs)]

mod layout;
mod rules;

pub use layout::{Device, TorusAxis, device_order};
pub use rules::Rules;

use serde::{Deserialize, Serialize};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can be wrong with a mesh.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The axis sizes do not multiply to the device count.
    #[error(
        "mesh data={data} x fsdp={fsdp} x tensor={tensor} = {product} does not equal the {devices} devices"
    )]
    Product {
        /// `mesh.data`.
        data: i64,
        /// `mesh.fsdp`.
        fsdp: i64,
        /// `mesh.tensor`.
        tensor: i64,
        /// Their product (with `-1` left out).
        product: i64,
        /// Device count.
        devices: i64,
    },
    /// A size is zero, below -1, or `-1` appears twice.
    #[error("mesh.{axis} = {value}: {expected}")]
    Size {
        /// The axis.
        axis: &'static str,
        /// The value given.
        value: i64,
        /// What is allowed.
        expected: String,
    },
    /// A model or batch size does not divide over the mesh.
    #[error("{what} = {value} does not divide over {axes} = {size}")]
    Divide {
        /// What is divided (`model.heads`, `data.batch_size`).
        what: String,
        /// Its value.
        value: i64,
        /// Mesh axes it is divided over.
        axes: String,
        /// Their total size.
        size: i64,
    },
    /// A device list does not fit the mesh or torus.
    #[error("device layout: {0}")]
    Layout(String),
}

/// The `[mesh]` section of a config: sizes of the three axes; `-1` on one
/// axis means "the devices that are left".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Pure data parallelism (parameters replicated).
    #[serde(default = "one")]
    pub data: i64,
    /// ZeRO-3 / FSDP: batch split and parameters + optimizer state sharded.
    #[serde(default = "minus_one")]
    pub fsdp: i64,
    /// Megatron-style tensor parallelism over heads, MLP and vocab.
    #[serde(default = "one")]
    pub tensor: i64,
}

fn one() -> i64 {
    1
}
fn minus_one() -> i64 {
    -1
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            data: 1,
            fsdp: -1,
            tensor: 1,
        }
    }
}

/// A resolved mesh: axis sizes that multiply to the device count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mesh {
    /// Data-parallel size.
    pub data: i64,
    /// FSDP size.
    pub fsdp: i64,
    /// Tensor-parallel size.
    pub tensor: i64,
}

impl MeshConfig {
    /// Resolves `-1` and checks the product against `devices`.
    pub fn resolve(self, devices: i64) -> Result<Mesh> {
        let sizes = [
            ("data", self.data),
            ("fsdp", self.fsdp),
            ("tensor", self.tensor),
        ];
        let mut rest = None;
        for (axis, v) in sizes {
            if v == -1 {
                if rest.is_some() {
                    return Err(Error::Size {
                        axis,
                        value: v,
                        expected: "only one axis may be -1".into(),
                    });
                }
                rest = Some(axis);
            } else if v < 1 {
                return Err(Error::Size {
                    axis,
                    value: v,
                    expected: "must be -1 or at least 1".into(),
                });
            }
        }
        let product: i64 = sizes.iter().map(|s| s.1).filter(|&v| v > 0).product();
        let fill = |v: i64| if v == -1 { devices / product.max(1) } else { v };
        let mesh = Mesh {
            data: fill(self.data),
            fsdp: fill(self.fsdp),
            tensor: fill(self.tensor),
        };
        if mesh.data * mesh.fsdp * mesh.tensor != devices || devices < 1 {
            return Err(Error::Product {
                data: self.data,
                fsdp: self.fsdp,
                tensor: self.tensor,
                product,
                devices,
            });
        }
        Ok(mesh)
    }
}

impl Mesh {
    /// One device.
    pub fn single() -> Mesh {
        Mesh {
            data: 1,
            fsdp: 1,
            tensor: 1,
        }
    }

    /// The axes in mesh order (outermost first), with sizes.
    pub fn axes(&self) -> [(&'static str, i64); 3] {
        [
            ("data", self.data),
            ("fsdp", self.fsdp),
            ("tensor", self.tensor),
        ]
    }

    /// Size of a named axis (0 if unknown).
    pub fn size(&self, axis: &str) -> i64 {
        self.axes().iter().find(|a| a.0 == axis).map_or(0, |a| a.1)
    }

    /// Number of devices.
    pub fn devices(&self) -> i64 {
        self.data * self.fsdp * self.tensor
    }

    /// Checks that `value` divides over `axes`, naming both if not.
    pub fn check_divides(&self, what: &str, value: i64, axes: &[&str]) -> Result<()> {
        let size: i64 = axes.iter().map(|a| self.size(a)).product();
        if size > 0 && value % size == 0 {
            return Ok(());
        }
        Err(Error::Divide {
            what: what.to_string(),
            value,
            axes: axes.join("*"),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_one_takes_the_rest() {
        let m = MeshConfig {
            data: 1,
            fsdp: -1,
            tensor: 2,
        }
        .resolve(8)
        .unwrap();
        assert_eq!((m.data, m.fsdp, m.tensor), (1, 4, 2));
        assert_eq!(MeshConfig::default().resolve(1).unwrap(), Mesh::single());
    }

    #[test]
    fn wrong_products_name_the_numbers() {
        let e = MeshConfig {
            data: 3,
            fsdp: 1,
            tensor: 1,
        }
        .resolve(8)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mesh data=3 x fsdp=1 x tensor=1 = 3 does not equal the 8 devices"
        );
        let e = MeshConfig {
            data: 3,
            fsdp: -1,
            tensor: 1,
        }
        .resolve(8)
        .unwrap_err();
        assert!(e.to_string().contains("data=3 x fsdp=-1"), "{e}");
        let e = MeshConfig {
            data: -1,
            fsdp: -1,
            tensor: 1,
        }
        .resolve(8)
        .unwrap_err();
        assert!(e.to_string().contains("only one axis may be -1"));
        let e = MeshConfig {
            data: 0,
            fsdp: 1,
            tensor: 1,
        }
        .resolve(8)
        .unwrap_err();
        assert!(e.to_string().contains("mesh.data = 0"));
    }

    #[test]
    fn divisibility_errors_name_what_and_where() {
        let m = MeshConfig {
            data: 2,
            fsdp: 2,
            tensor: 2,
        }
        .resolve(8)
        .unwrap();
        let e = m
            .check_divides("data.batch_size", 6, &["data", "fsdp"])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "data.batch_size = 6 does not divide over data*fsdp = 4"
        );
        m.check_divides("model.heads", 8, &["tensor"]).unwrap();
    }
}
