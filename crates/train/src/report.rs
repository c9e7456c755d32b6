//! The start-up report: the mesh and device order, each parameter's
//! sharding, per-device bytes of parameters and optimizer state, the
//! compiler's memory plan, and the collectives XLA inserted into one step
//! (per step: an instruction inside a loop counts as often as it iterates).

use std::fmt::Write;

use pjrt::{MemoryStats, hlo::HloSummary};

use crate::step::{Plan, Slot};

/// One parameter row (layers collapsed to `layers.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamRow {
    /// Name with the layer index replaced by `*`.
    pub name: String,
    /// Global shape.
    pub shape: Vec<usize>,
    /// Mesh axes per dimension.
    pub axes: Vec<Vec<String>>,
    /// Shape each device holds.
    pub shard_shape: Vec<usize>,
    /// How many tensors the row stands for.
    pub count: usize,
}

/// Collectives of one kind in the optimized step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collective {
    /// `all-gather`, `reduce-scatter`, `all-reduce`, `all-to-all`, `collective-permute`.
    pub kind: &'static str,
    /// How many run per step: each instruction counted as often as the
    /// loops around it iterate (decoder layers under `scan_layers`,
    /// accumulation micro-batches).
    pub count: u64,
    /// How many instructions of the kind the optimized program holds (a
    /// collective inside a loop is one instruction, many runs).
    pub instructions: usize,
    /// Bytes of their per-device results per step, summed over runs.
    pub bytes: u64,
    /// True when a loop around one of them has no known trip count (counted
    /// once), so `count` and `bytes` are lower bounds.
    pub lower_bound: bool,
}

/// Everything the start-up table shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardingReport {
    /// `(axis, size)` of the mesh.
    pub mesh: Vec<(String, i64)>,
    /// Device ids in partition order.
    pub device_order: Vec<i64>,
    /// Parameter rows.
    pub params: Vec<ParamRow>,
    /// Bytes of parameters one device holds (f32).
    pub param_bytes_per_device: u64,
    /// Bytes of both AdamW moments one device holds.
    pub optimizer_bytes_per_device: u64,
    /// The compiler's per-device memory plan.
    pub memory: MemoryStats,
    /// Collectives per step.
    pub collectives: Vec<Collective>,
}

const KINDS: [&str; 5] = [
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
];

impl ShardingReport {
    /// Builds the report from the plan, parameter slots, the compiled memory
    /// plan and the optimized module.
    pub fn new(
        plan: &Plan,
        params: &[Slot],
        device_order: Vec<i64>,
        memory: MemoryStats,
        hlo: &HloSummary,
    ) -> Self {
        let mut rows: Vec<ParamRow> = Vec::new();
        let mut bytes = 0u64;
        for slot in params {
            let shard: Vec<usize> =
                crate::shard::shard_ranges(&plan.mesh, &slot.shape, &slot.axes, 0)
                    .iter()
                    .map(|r| r.len())
                    .collect();
            bytes += 4 * shard.iter().product::<usize>() as u64;
            let name = collapse_layer(&slot.name);
            match rows
                .iter_mut()
                .find(|r| r.name == name && r.shape == slot.shape)
            {
                Some(r) => r.count += 1,
                None => rows.push(ParamRow {
                    name,
                    shape: slot.shape.clone(),
                    axes: slot.axes.clone(),
                    shard_shape: shard,
                    count: 1,
                }),
            }
        }
        let collectives = collectives(hlo);
        ShardingReport {
            mesh: plan
                .mesh
                .axes()
                .iter()
                .map(|(a, n)| (a.to_string(), *n))
                .collect(),
            device_order,
            params: rows,
            param_bytes_per_device: bytes,
            optimizer_bytes_per_device: 2 * bytes,
            memory,
            collectives,
        }
    }

    /// The report as a text table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mesh: Vec<String> = self.mesh.iter().map(|(a, n)| format!("{a}={n}")).collect();
        let _ = writeln!(
            s,
            "mesh {}  ({} devices, order {:?})",
            mesh.join(" x "),
            self.device_order.len(),
            self.device_order
        );
        let _ = writeln!(
            s,
            "{:<48} {:>5} {:<16} {:<28} {:<14}",
            "parameter", "count", "shape", "sharding", "per device"
        );
        for r in &self.params {
            let axes: Vec<String> = r
                .axes
                .iter()
                .map(|a| {
                    if a.is_empty() {
                        "-".into()
                    } else {
                        a.join("+")
                    }
                })
                .collect();
            let _ = writeln!(
                s,
                "{:<48} {:>5} {:<16} {:<28} {:<14}",
                r.name,
                r.count,
                format!("{:?}", r.shape),
                format!("[{}]", axes.join(", ")),
                format!("{:?}", r.shard_shape)
            );
        }
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let m = &self.memory;
        let _ = writeln!(
            s,
            "per device: parameters {:.2} MiB + AdamW moments {:.2} MiB; compiled: arguments {:.2} MiB, outputs {:.2} MiB (aliased {:.2}), temporaries {:.2} MiB, peak {:.2} MiB",
            mib(self.param_bytes_per_device),
            mib(self.optimizer_bytes_per_device),
            mib(m.argument_bytes as u64),
            mib(m.output_bytes as u64),
            mib(m.alias_bytes as u64),
            mib(m.temp_bytes as u64),
            mib(m.peak_bytes as u64)
        );
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>14} {:>12}",
            "collective per step", "count", "MiB", "in program"
        );
        for c in &self.collectives {
            let at_least = if c.lower_bound { "\u{2265}" } else { "" };
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>14} {:>12}",
                c.kind,
                format!("{at_least}{}", c.count),
                format!("{at_least}{:.3}", mib(c.bytes)),
                c.instructions
            );
        }
        if self.collectives.iter().any(|c| c.lower_bound) {
            let _ = writeln!(
                s,
                "\u{2265}: inside a loop whose trip count XLA does not state, counted once"
            );
        }
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mesh": self.mesh.iter().map(|(a, n)| (a.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "device_order": self.device_order,
            "params": self.params.iter().map(|r| serde_json::json!({
                "name": r.name, "count": r.count, "shape": r.shape, "sharding": r.axes, "shard_shape": r.shard_shape,
            })).collect::<Vec<_>>(),
            "param_bytes_per_device": self.param_bytes_per_device,
            "optimizer_bytes_per_device": self.optimizer_bytes_per_device,
            "compiled": {
                "argument_bytes": self.memory.argument_bytes, "output_bytes": self.memory.output_bytes,
                "alias_bytes": self.memory.alias_bytes, "temp_bytes": self.memory.temp_bytes, "peak_bytes": self.memory.peak_bytes,
            },
            "collectives": self.collectives.iter().map(|c| serde_json::json!({"kind": c.kind, "count": c.count, "bytes": c.bytes, "instructions": c.instructions, "lower_bound": c.lower_bound})).collect::<Vec<_>>(),
        })
    }
}

fn collapse_layer(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i > 0 && parts[i - 1] == "layers" && p.parse::<usize>().is_ok() {
                "*"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The collectives of an optimized module, per step: each instruction's
/// runs ([`pjrt::hlo::HloInstruction::executions`]) and result bytes.
pub fn collectives(hlo: &HloSummary) -> Vec<Collective> {
    KINDS
        .iter()
        .map(|&kind| {
            let hits: Vec<_> = hlo
                .instructions
                .iter()
                .filter(|i| i.opcode == kind || i.opcode.strip_suffix("-start") == Some(kind))
                .collect();
            Collective {
                kind,
                count: hits.iter().map(|i| i.executions).sum(),
                instructions: hits.len(),
                bytes: hits
                    .iter()
                    .map(|i| result_bytes(i).saturating_mul(i.executions))
                    .sum(),
                lower_bound: hits.iter().any(|i| i.executions_lower_bound),
            }
        })
        .collect()
}

/// Bytes of a collective's result. An asynchronous `all-gather-start` or
/// `collective-permute-start` returns a tuple of its operands, its results
/// (and, for a permute, two context scalars): only the results count.
fn result_bytes(i: &pjrt::hlo::HloInstruction) -> u64 {
    let tuple_start = matches!(
        i.opcode.as_str(),
        "all-gather-start" | "collective-permute-start"
    );
    match &i.shape.tuple[..] {
        [_, results, ..] if tuple_start => results.size_in_bytes(),
        _ => i.shape.size_in_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use pjrt::hlo::{HloInstruction, HloShape, HloSummary};

    fn f32s(n: i64) -> HloShape {
        HloShape {
            element_type: Some(pjrt::ElementType::F32),
            primitive_type: 11,
            dims: vec![n],
            tuple: vec![],
        }
    }

    fn tuple(parts: Vec<HloShape>) -> HloShape {
        HloShape {
            element_type: None,
            primitive_type: 13,
            dims: vec![],
            tuple: parts,
        }
    }

    fn inst(opcode: &str, shape: HloShape, executions: u64) -> HloInstruction {
        HloInstruction {
            name: opcode.into(),
            opcode: opcode.into(),
            shape,
            computation: "main".into(),
            called_computations: vec![],
            trip_count: None,
            executions,
            executions_lower_bound: false,
        }
    }

    #[test]
    fn asynchronous_collectives_count_their_results_per_run() {
        let u32s = HloShape {
            element_type: Some(pjrt::ElementType::U32),
            primitive_type: 8,
            dims: vec![],
            tuple: vec![],
        };
        let hlo = HloSummary {
            instructions: vec![
                // (operand f32[8], result f32[64]), run 3 times: 3 x 256 B.
                inst("all-gather-start", tuple(vec![f32s(8), f32s(64)]), 3),
                inst("all-gather-done", f32s(64), 3),
                inst("all-gather", f32s(16), 1),
                // (operand, result, two context scalars): the result only.
                inst(
                    "collective-permute-start",
                    tuple(vec![f32s(10), f32s(10), u32s.clone(), u32s]),
                    2,
                ),
                // Several results of one all-reduce: all of them.
                inst("all-reduce-start", tuple(vec![f32s(4), f32s(6)]), 1),
            ],
            ..HloSummary::default()
        };
        let by_kind = |k: &str| {
            super::collectives(&hlo)
                .into_iter()
                .find(|c| c.kind == k)
                .unwrap()
        };
        let ag = by_kind("all-gather");
        assert_eq!((ag.count, ag.instructions, ag.bytes), (4, 2, 3 * 256 + 64));
        let cp = by_kind("collective-permute");
        assert_eq!((cp.count, cp.bytes), (2, 2 * 40));
        let ar = by_kind("all-reduce");
        assert_eq!((ar.count, ar.bytes), (1, 40));
    }
}
