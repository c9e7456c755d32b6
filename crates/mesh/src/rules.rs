//! Logical-axis rules: which mesh axes each logical axis is split over.
//! Data parallel, FSDP (ZeRO-3) and tensor parallel are all just rules.

use std::collections::BTreeMap;

use crate::{Error, Mesh, Result};

/// A table from logical axis names to mesh axes, in the spirit of MaxText's
/// `logical_axis_rules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    table: BTreeMap<String, Vec<String>>,
}

impl Default for Rules {
    /// Batch over `data` and `fsdp`; parameters' `embed` over `fsdp`
    /// (ZeRO-3: parameters, gradients and both AdamW moments sharded);
    /// `heads`, `kv_heads`, `mlp` and `vocab` over `tensor` (Megatron);
    /// everything else replicated, the `layers` axis of weights stacked per
    /// layer included.
    fn default() -> Self {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table = BTreeMap::from([
            ("batch".to_string(), t(&["data", "fsdp"])),
            ("embed".to_string(), t(&["fsdp"])),
            ("heads".to_string(), t(&["tensor"])),
            ("kv_heads".to_string(), t(&["tensor"])),
            ("mlp".to_string(), t(&["tensor"])),
            ("vocab".to_string(), t(&["tensor"])),
            ("seq".to_string(), t(&[])),
            ("norm".to_string(), t(&[])),
            ("act_embed".to_string(), t(&[])),
            ("layers".to_string(), t(&[])),
        ]);
        Rules { table }
    }
}

impl Rules {
    /// The defaults with some logical axes remapped, e.g. `embed = []` to
    /// turn FSDP into pure data parallelism. Mesh axis names are checked.
    pub fn with_overrides(overrides: &BTreeMap<String, Vec<String>>) -> Result<Rules> {
        let mut rules = Rules::default();
        for (logical, axes) in overrides {
            if let Some(bad) = axes
                .iter()
                .find(|a| !matches!(a.as_str(), "data" | "fsdp" | "tensor"))
            {
                return Err(Error::Layout(format!(
                    "mesh.rules.{logical} names mesh axis {bad:?}; expected \"data\", \"fsdp\" or \"tensor\""
                )));
            }
            rules.table.insert(logical.clone(), axes.clone());
        }
        Ok(rules)
    }

    /// Mesh axes for a logical axis (empty: replicated).
    pub fn get(&self, logical: &str) -> &[String] {
        self.table.get(logical).map_or(&[], Vec::as_slice)
    }

    /// Per-dimension mesh axes for a tensor whose dimensions are
    /// `(logical axis, divisibility unit)`: the unit is the count that must
    /// divide (e.g. the number of kv heads, not heads x head_dim).
    ///
    /// Axes of size 1 are left out, a mesh axis is used at most once per
    /// tensor, and a dimension that does not divide keeps only the leading
    /// axes that do (replicated if none): multi-query attention's single kv
    /// head is replicated over `tensor`.
    pub fn shard(&self, mesh: &Mesh, dims: &[(&str, i64)]) -> Vec<Vec<String>> {
        let mut used: Vec<String> = Vec::new();
        dims.iter()
            .map(|(logical, unit)| {
                let mut axes = Vec::new();
                let mut size = 1;
                for a in self.get(logical) {
                    let n = mesh.size(a);
                    if n <= 1 || used.contains(a) || unit % (size * n) != 0 {
                        continue;
                    }
                    size *= n;
                    axes.push(a.clone());
                }
                used.extend(axes.iter().cloned());
                axes
            })
            .collect::<Vec<_>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshConfig;

    fn mesh(data: i64, fsdp: i64, tensor: i64) -> Mesh {
        MeshConfig { data, fsdp, tensor }
            .resolve(data * fsdp * tensor)
            .unwrap()
    }

    fn s(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|d| d.iter().map(|a| a.to_string()).collect())
            .collect()
    }

    #[test]
    fn fsdp_shards_embed_and_batch() {
        let r = Rules::default();
        let m = mesh(1, 8, 1);
        assert_eq!(
            r.shard(&m, &[("mlp", 64), ("embed", 256)]),
            s(&[&[], &["fsdp"]])
        );
        assert_eq!(
            r.shard(&m, &[("batch", 16), ("seq", 128)]),
            s(&[&["fsdp"], &[]])
        );
    }

    #[test]
    fn tensor_parallel_replicates_a_single_kv_head() {
        let r = Rules::default();
        let m = mesh(1, 4, 2);
        assert_eq!(
            r.shard(&m, &[("kv_heads", 1), ("embed", 256)]),
            s(&[&[], &["fsdp"]])
        );
        assert_eq!(
            r.shard(&m, &[("heads", 8), ("embed", 256)]),
            s(&[&["tensor"], &["fsdp"]])
        );
    }

    #[test]
    fn mixed_mesh_splits_batch_over_data_and_fsdp() {
        let r = Rules::default();
        let m = mesh(2, 2, 2);
        assert_eq!(
            r.shard(&m, &[("batch", 8), ("seq", 4), ("act_embed", 16)]),
            s(&[&["data", "fsdp"], &[], &[]])
        );
        // A batch of 2 only divides over data.
        assert_eq!(r.shard(&m, &[("batch", 2)]), s(&[&["data"]]));
    }

    #[test]
    fn a_mesh_axis_is_used_once_per_tensor() {
        let mut o = BTreeMap::new();
        o.insert("mlp".to_string(), vec!["fsdp".to_string()]);
        let r = Rules::with_overrides(&o).unwrap();
        let m = mesh(1, 8, 1);
        assert_eq!(
            r.shard(&m, &[("embed", 64), ("mlp", 64)]),
            s(&[&["fsdp"], &[]])
        );
    }

    #[test]
    fn overrides_check_mesh_axis_names() {
        let mut o = BTreeMap::new();
        o.insert("embed".to_string(), vec!["model".to_string()]);
        let e = Rules::with_overrides(&o).unwrap_err().to_string();
        assert!(
            e.contains("mesh.rules.embed") && e.contains("\"model\""),
            "{e}"
        );
    }
}
