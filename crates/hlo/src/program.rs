//! A finished program: outputs, their shardings, donation, and emission.

use std::collections::BTreeMap;

use crate::op::Op;
use crate::sharding::Sharding;
use crate::{Builder, Error, Result, TensorType, Value};

/// A finished tensor program: the graph plus its outputs, output shardings
/// and input-to-output donations. Emit it with [`Program::to_mlir`].
#[derive(Clone, Debug)]
pub struct Program {
    pub(crate) b: Builder,
    pub(crate) outputs: Vec<Value>,
    pub(crate) out_shardings: Vec<Option<Sharding>>,
    /// Per parameter: the output it is donated to.
    pub(crate) aliases: Vec<Option<usize>>,
    /// Precision of the f32 contractions.
    pub(crate) dot_precision: DotPrecision,
}

/// Precision of f32 contractions (`dot_general`), where hardware has faster,
/// less precise modes (TF32 tensor cores on NVIDIA GPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DotPrecision {
    /// The compiler's choice (no `precision` attribute).
    #[default]
    Default,
    /// Full f32: `precision = [HIGHEST, HIGHEST]` on every f32 contraction.
    Highest,
}

impl Builder {
    /// Finishes the program with these outputs (in the order `@main` returns them).
    pub fn build(self, outputs: &[Value]) -> Result<Program> {
        for &v in outputs {
            self.check("build", v)?;
        }
        let n_params = self.params.len();
        Ok(Program {
            b: self,
            outputs: outputs.to_vec(),
            out_shardings: vec![None; outputs.len()],
            aliases: vec![None; n_params],
            dot_precision: DotPrecision::Default,
        })
    }
}

impl Program {
    /// Sets the precision of the program's f32 contractions (loop bodies
    /// included); bf16 contractions are left as they are.
    pub fn set_dot_precision(&mut self, p: DotPrecision) {
        self.dot_precision = p;
    }

    /// The graph the program was built from.
    pub fn builder(&self) -> &Builder {
        &self.b
    }

    /// The outputs.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    /// Types of the parameters, in order.
    pub fn parameter_types(&self) -> Vec<TensorType> {
        self.b
            .params
            .iter()
            .map(|p| self.b.ty(p.value).clone())
            .collect()
    }

    /// Types of the outputs, in order.
    pub fn output_types(&self) -> Vec<TensorType> {
        self.outputs.iter().map(|&v| self.b.ty(v).clone()).collect()
    }

    /// Names of the parameters, in order.
    pub fn parameter_names(&self) -> Vec<&str> {
        self.b.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Shardings of the parameters, in order (`None`: replicated).
    pub fn parameter_shardings(&self) -> Vec<Option<&Sharding>> {
        self.b.params.iter().map(|p| p.sharding.as_ref()).collect()
    }

    /// Shardings of the outputs, in order (`None`: replicated).
    pub fn output_shardings(&self) -> Vec<Option<&Sharding>> {
        self.out_shardings.iter().map(|s| s.as_ref()).collect()
    }

    /// Number of partitions (devices) the program is compiled for: the
    /// mesh's size, or 1 without a mesh.
    pub fn num_partitions(&self) -> i64 {
        self.b.mesh.as_ref().map_or(1, |m| m.num_devices())
    }

    /// Sets the sharding of output `index` (replicated by default).
    pub fn set_output_sharding(&mut self, index: usize, sharding: Sharding) -> Result<()> {
        let v = *self.outputs.get(index).ok_or_else(|| Error::Invalid {
            op: "set_output_sharding",
            message: format!("output {index} of {}", self.outputs.len()),
        })?;
        sharding.check(
            self.b.mesh.as_ref(),
            self.b.ty(v),
            &format!("output {index}"),
        )?;
        self.out_shardings[index] = Some(sharding);
        Ok(())
    }

    /// Donates parameter `param`'s buffer to output `output`
    /// (`tf.aliasing_output`): same type required, each output once. With a
    /// mesh, give the output the parameter's sharding so that the shards
    /// have the same shape.
    pub fn donate(&mut self, param: Value, output: usize) -> Result<()> {
        let err = |message: String| {
            Err(Error::Invalid {
                op: "donate",
                message,
            })
        };
        let pi = match self.b.nodes.get(param.index()).map(|n| &n.op) {
            Some(Op::Parameter(pi)) => *pi,
            _ => return err(format!("value %{} is not a parameter", param.index())),
        };
        let Some(&out) = self.outputs.get(output) else {
            return err(format!("output {output} of {}", self.outputs.len()));
        };
        if self.b.ty(param) != self.b.ty(out) {
            return err(format!(
                "parameter {} is {}, output {output} is {}",
                self.b.params[pi].name,
                self.b.ty(param),
                self.b.ty(out)
            ));
        }
        if self
            .aliases
            .iter()
            .enumerate()
            .any(|(i, a)| *a == Some(output) && i != pi)
        {
            return err(format!("output {output} already has a donor"));
        }
        self.aliases[pi] = Some(output);
        Ok(())
    }

    /// How many times each StableHLO op kind appears among the nodes that
    /// the outputs depend on (`"dot_general"`, `"tanh"`, ...).
    pub fn op_counts(&self) -> BTreeMap<&'static str, usize> {
        let live = self.live();
        let mut m = BTreeMap::new();
        for (i, n) in self.b.nodes.iter().enumerate() {
            if live[i] && !matches!(n.op, Op::Project(..) | Op::StopGradient(_)) {
                *m.entry(n.op.kind()).or_insert(0) += 1;
            }
        }
        m
    }

    /// Marks the nodes the outputs depend on.
    pub(crate) fn live(&self) -> Vec<bool> {
        crate::emit::live_from(&self.b, &self.outputs)
    }

    /// Writes the module to `dir/<name>.mlir` and returns the path.
    pub fn dump_to(&self, dir: &std::path::Path) -> Result<std::path::PathBuf> {
        self.write_module(dir, &crate::emit::emit(self))
    }

    pub(crate) fn write_module(
        &self,
        dir: &std::path::Path,
        text: &str,
    ) -> Result<std::path::PathBuf> {
        let path = dir.join(format!("{}.mlir", self.b.name));
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&path, text).map_err(io)?;
        Ok(path)
    }

    /// The debug switch: if the environment variable `MESHTRAIN_DUMP_HLO`
    /// names a directory, [`Program::to_mlir`] also writes each module it
    /// emits to `DIR/<name>.mlir`. Returns that directory, if set.
    pub fn dump_dir() -> Option<std::path::PathBuf> {
        std::env::var_os("MESHTRAIN_DUMP_HLO")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
    }
}
