//! One training step on the devices: the fused one-program step, or, in a
//! process group, the gradient program on this process's rows, a sum over
//! processes, and the update program.

use pjrt::{Buffer, Client, LoadedExecutable};

use crate::device::{PerPartition, Placement, compile, get_into, put, put_rows};
use crate::state::DeviceState;
use crate::step::{Plan, Slot, StepShape, build_split, build_step_with};
use crate::{ProcessGroup, Result, TrainConfig};

/// What a step reports.
pub(crate) struct StepOut {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
    /// The objective's own metrics (`accuracy`, `margin`...).
    pub extra: Vec<(&'static str, f32)>,
}

impl StepOut {
    /// From a program's scalar outputs and their names; `loss` when the
    /// program returns none.
    fn named(names: &[&'static str], values: &[f32], loss: Option<f32>) -> Result<StepOut> {
        let get = |name: &str| {
            names
                .iter()
                .position(|n| *n == name)
                .map(|i| values[i])
                .ok_or_else(|| {
                    crate::Error::config(
                        "step",
                        "outputs",
                        format!("the step program returns no {name:?} (it returns {names:?})"),
                    )
                })
        };
        let loss = match loss {
            Some(l) => l,
            None => get("loss")?,
        };
        let extra = names
            .iter()
            .zip(values)
            .filter(|(n, _)| !["loss", "grad_norm", "learning_rate"].contains(n))
            .map(|(n, v)| (*n, *v))
            .collect();
        Ok(StepOut {
            loss,
            grad_norm: get("grad_norm")?,
            lr: get("learning_rate")?,
            extra,
        })
    }
}

/// A launched step: the state is already the step's outputs (handles the
/// devices are still filling); its scalars are read by [`Launched::finish`],
/// so the host can prepare the next step meanwhile.
pub(crate) enum Launched {
    /// The fused step, still running.
    Running {
        running: pjrt::Running,
        /// The step's scalar outputs, named by `names`.
        scalars: Vec<Buffer>,
        names: Vec<&'static str>,
    },
    /// A step whose numbers are known (the split step of a process group).
    Done(StepOut),
}

impl Launched {
    /// Waits for the step and reads what it reports.
    pub(crate) fn finish(self) -> Result<StepOut> {
        match self {
            Launched::Done(out) => Ok(out),
            Launched::Running {
                running,
                scalars: bufs,
                names,
            } => {
                running.wait()?;
                StepOut::named(&names, &scalars(&bufs)?, None)
            }
        }
    }
}

/// A compiled program and the partition of each of its argument lists.
pub(crate) struct Exe {
    pub exe: LoadedExecutable,
    pub partition_of: Vec<usize>,
}

/// The compiled step.
pub(crate) enum Stepper<'g> {
    /// One program: forward, backward, update.
    Fused {
        exe: Exe,
        batch: Vec<Slot>,
        /// Names of the scalar outputs after the state.
        scalars: Vec<&'static str>,
        /// The frozen parameter sets, once set ([`Stepper::set_frozen`]):
        /// the reference policy (DPO, RL), then the reward model (RL).
        frozen: Option<Vec<PerPartition<Buffer>>>,
        /// The slots of every frozen parameter, in input order.
        frozen_slots: Vec<Slot>,
    },
    /// Gradient program, cross-process sum, update program.
    Split {
        grads: Exe,
        apply: Exe,
        /// Names of the update program's scalar outputs after the state.
        apply_scalars: Vec<&'static str>,
        batch: Vec<Slot>,
        group: &'g dyn ProcessGroup,
    },
}

impl<'g> Stepper<'g> {
    /// Builds and compiles the step for `cfg` (split when `group` is
    /// given); returns it with the parameter slots.
    pub(crate) fn new(
        cfg: &TrainConfig,
        client: &Client,
        plan: &Plan,
        order: &[i64],
        group: Option<&'g dyn ProcessGroup>,
    ) -> Result<(Stepper<'g>, Vec<Slot>)> {
        let model = cfg.model.resolve()?;
        let a = cfg.optimizer.accumulation_steps;
        let processes = group.map_or(1, |g| g.size());
        if group.is_some() && cfg.train.objective != crate::objective::Objective::Lm {
            return Err(crate::Error::config(
                "train",
                "train.objective",
                format!(
                    "{:?}: CPU process groups train the LM objective only; run it in one process \
                     (any number of devices) or as one SPMD program over a pod",
                    cfg.train.objective.name()
                ),
            ));
        }
        let micro_batch = cfg.rows_per_process(processes)?;
        let shape = StepShape {
            accumulation: a,
            micro_batch,
            seq_len: cfg.data.seq_len,
            total_steps: cfg.optimizer.schedule_steps.unwrap_or(cfg.train.steps),
        };
        let mut compute = cfg.compute_options()?;
        if compute.dtype == hlo::DType::BF16
            && client.platform_name() == "cpu"
            && crate::mfu::cpu_bf16_widened_is_faster(
                client,
                &cfg.runtime.xla_options(compute.dtype)?,
            )?
        {
            // The same bf16 numbers, multiplied in f32 (gemma::Matmuls).
            compute.matmuls = gemma::Matmuls::F32 {
                weights_rounded: false,
            };
        }
        let exe = |mlir: String| -> Result<Exe> {
            let (exe, partition_of) = compile(client, cfg, plan, order, &mlir)?;
            Ok(Exe { exe, partition_of })
        };
        match group {
            None => {
                let loss = crate::step::loss_of(cfg, &model)?;
                let mut step = build_step_with(&model, &cfg.optimizer, compute, shape, plan, loss)?;
                step.program.set_dot_precision(cfg.runtime.dot_precision()?);
                let fused = exe(step.program.to_mlir())?;
                let mut frozen_slots = Vec::new();
                if step.reference {
                    frozen_slots.extend(step.params.iter().cloned());
                }
                frozen_slots.extend(step.reward);
                Ok((
                    Stepper::Fused {
                        exe: fused,
                        batch: step.batch,
                        scalars: step.scalars,
                        frozen: None,
                        frozen_slots,
                    },
                    step.params,
                ))
            }
            Some(group) => {
                let (mut g, mut u) = build_split(&model, &cfg.optimizer, compute, shape, plan)?;
                g.program.set_dot_precision(cfg.runtime.dot_precision()?);
                u.program.set_dot_precision(cfg.runtime.dot_precision()?);
                let grads = exe(g.program.to_mlir())?;
                let apply = exe(u.program.to_mlir())?;
                Ok((
                    Stepper::Split {
                        grads,
                        apply,
                        apply_scalars: u.scalars,
                        batch: g.batch,
                        group,
                    },
                    g.params,
                ))
            }
        }
    }

    /// How many frozen parameters the step reads (the reference policy
    /// of DPO and RL, RL's reward model), in input order; none when 0.
    pub(crate) fn frozen_count(&self) -> usize {
        match self {
            Stepper::Fused { frozen_slots, .. } => frozen_slots.len(),
            Stepper::Split { .. } => 0,
        }
    }

    /// Puts the frozen parameters (`values`, in [`Stepper::frozen_count`]
    /// order: the reference in parameter order, then the reward model's) on
    /// this process's devices.
    pub(crate) fn set_frozen(
        &mut self,
        client: &Client,
        plan: &Plan,
        at: &Placement,
        values: &[Vec<f32>],
    ) -> Result<()> {
        if let Stepper::Fused {
            frozen,
            frozen_slots,
            ..
        } = self
        {
            if values.len() != frozen_slots.len() {
                return Err(crate::Error::config(
                    "step",
                    "frozen parameters",
                    format!(
                        "{} given, the step reads {}",
                        values.len(),
                        frozen_slots.len()
                    ),
                ));
            }
            *frozen = Some(
                frozen_slots
                    .iter()
                    .zip(values)
                    .map(|(slot, v)| put(client, plan, at, slot, v))
                    .collect::<Result<_>>()?,
            );
        }
        Ok(())
    }

    /// The program whose memory and collectives the start-up report shows.
    pub(crate) fn main(&self) -> &LoadedExecutable {
        match self {
            Stepper::Fused { exe, .. } => &exe.exe,
            Stepper::Split { grads, .. } => &grads.exe,
        }
    }

    /// The batch slots (`[accumulation, micro, seq_len]` each).
    pub(crate) fn batch_slots(&self) -> &[Slot] {
        match self {
            Stepper::Fused { batch, .. } | Stepper::Split { batch, .. } => batch,
        }
    }

    /// Launches step `s` on `batch`, updating `state`: the fused step takes
    /// each host's rows (`(host, rows)`); the split step of a process
    /// group takes the whole global batch as one host's (and runs to its
    /// end: its gradients are summed across processes on the host). The
    /// fused step returns at once, `state` holding its outputs; its numbers
    /// come with [`Launched::finish`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        &self,
        client: &Client,
        plan: &Plan,
        at: &Placement,
        params: &[Slot],
        state: &mut PerPartition<DeviceState>,
        batch: &[(usize, &[usize], data::Batch)],
        s: u64,
    ) -> Result<Launched> {
        let k = crate::step::state_len(params.len());
        match self {
            Stepper::Fused {
                exe,
                batch: slots,
                scalars: names,
                frozen,
                frozen_slots,
            } => {
                let mut inputs: Vec<PerPartition<Buffer>> = slots
                    .iter()
                    .map(|_| (0..at.device_of.len()).map(|_| None).collect())
                    .collect();
                for (host, rows, b) in batch {
                    put_host_batch(client, plan, at, *host, slots, rows, b, &mut inputs)?;
                }
                let none = Vec::new();
                let frozen = match frozen {
                    Some(f) => f,
                    None if frozen_slots.is_empty() => &none,
                    None => unreachable!("set_frozen runs before the first step"),
                };
                let (mut outs, running) = launch(exe, state, k, &[frozen, &inputs])?;
                let scalars: Vec<Buffer> = outs[0].drain(k..k + names.len()).collect();
                for (i, o) in outs.iter_mut().enumerate() {
                    state[exe.partition_of[i]] = Some(o.drain(..k).collect());
                }
                Ok(Launched::Running {
                    running,
                    scalars,
                    names: names.clone(),
                })
            }
            Stepper::Split {
                grads,
                apply,
                apply_scalars,
                batch: slots,
                group,
            } => {
                let batch = &batch[0].2;
                // The global token count, so the summed gradients are those
                // of the global mean loss (integers: exact in f32).
                let count = batch.loss_mask.iter().sum::<f32>().max(1.0);
                let local = rows_of(batch, slots[0].shape[0], group.rank(), group.size());
                let mut inputs = put_batch(client, plan, at, slots, &local)?;
                inputs.push(
                    at.device_of
                        .iter()
                        .map(|d| {
                            d.map(|d| client.buffer_from_host(&[count], &[], d))
                                .transpose()
                        })
                        .collect::<std::result::Result<_, _>>()?,
                );
                let outs = execute(grads, state, params.len(), &[&inputs])?;
                let by_partition = by_partition(grads, &outs);
                // Gradients straight into the exchange buffer, then the loss.
                let sizes: Vec<usize> = params.iter().map(|p| p.shape.iter().product()).collect();
                let mut flat = vec![0f32; sizes.iter().sum::<usize>() + 1];
                let mut offset = 0;
                for (i, slot) in params.iter().enumerate() {
                    let shards: Vec<&Buffer> = by_partition.iter().map(|o| &o[i]).collect();
                    get_into(plan, slot, &shards, &mut flat[offset..offset + sizes[i]])?;
                    offset += sizes[i];
                }
                flat[offset] = scalars(&outs[0][params.len()..])?[0];
                group.all_reduce_sum(s, &mut flat)?;
                // invariant: flat holds the loss after the gradients.
                let loss = flat.pop().expect("loss");
                let mut summed: Vec<PerPartition<Buffer>> = Vec::with_capacity(params.len());
                let mut offset = 0;
                for (slot, n) in params.iter().zip(&sizes) {
                    summed.push(put(client, plan, at, slot, &flat[offset..offset + n])?);
                    offset += n;
                }
                let mut outs = execute(apply, state, k, &[&summed])?;
                let scalars = scalars(&outs[0][k..k + apply_scalars.len()])?;
                for (i, o) in outs.iter_mut().enumerate() {
                    state[apply.partition_of[i]] = Some(o.drain(..k).collect());
                }
                Ok(Launched::Done(StepOut::named(
                    apply_scalars,
                    &scalars,
                    Some(loss),
                )?))
            }
        }
    }
}

/// The batch arrays as per-partition buffers, in slot order (every
/// partition local: a process group's worker).
fn put_batch(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    slots: &[Slot],
    b: &data::Batch,
) -> Result<Vec<PerPartition<Buffer>>> {
    Ok(vec![
        put(client, plan, at, &slots[0], &b.tokens)?,
        put(client, plan, at, &slots[1], &b.targets)?,
        put(client, plan, at, &slots[2], &b.loss_mask)?,
        put(client, plan, at, &slots[3], &b.segment_ids)?,
        put(client, plan, at, &slots[4], &b.positions)?,
    ])
}

/// Host `host`'s batch rows (`rows`, global indices) onto its partitions.
#[allow(clippy::too_many_arguments)]
fn put_host_batch(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    host: usize,
    slots: &[Slot],
    rows: &[usize],
    b: &data::Batch,
    out: &mut [PerPartition<Buffer>],
) -> Result<()> {
    for (i, data) in [
        (0, &b.tokens),
        (1, &b.targets),
        (3, &b.segment_ids),
        (4, &b.positions),
    ] {
        put_rows(client, plan, at, host, &slots[i], rows, data, &mut out[i])?;
    }
    put_rows(
        client,
        plan,
        at,
        host,
        &slots[2],
        rows,
        &b.loss_mask,
        &mut out[2],
    )
}

/// Runs `exe` with, per partition, the first `take` state buffers followed
/// by each input group (this process's partitions: those of all the hosts
/// it runs, combined here and only here), and waits for it.
fn execute(
    exe: &Exe,
    state: &PerPartition<DeviceState>,
    take: usize,
    inputs: &[&Vec<PerPartition<Buffer>>],
) -> Result<Vec<Vec<Buffer>>> {
    let (outs, running) = launch(exe, state, take, inputs)?;
    running.wait()?;
    Ok(outs)
}

/// [`execute`] without waiting.
fn launch(
    exe: &Exe,
    state: &PerPartition<DeviceState>,
    take: usize,
    inputs: &[&Vec<PerPartition<Buffer>>],
) -> Result<(Vec<Vec<Buffer>>, pjrt::Running)> {
    let args: Vec<Vec<&Buffer>> = exe
        .partition_of
        .iter()
        .map(|&p| {
            let local = state[p]
                .as_ref()
                // invariant: the executable's partitions are this process's (Placement).
                .expect("the executable runs local partitions");
            local[..take]
                .iter()
                .chain(inputs.iter().flat_map(|group| {
                    group
                        .iter()
                        // invariant: inputs are put on every local partition.
                        .map(move |x| x[p].as_ref().expect("inputs of local partitions"))
                }))
                .collect()
        })
        .collect();
    Ok(exe.exe.execute_async(&args)?)
}

/// The outputs in partition order.
fn by_partition<'a>(exe: &Exe, outs: &'a [Vec<Buffer>]) -> Vec<&'a Vec<Buffer>> {
    let mut order: Vec<(usize, &Vec<Buffer>)> =
        exe.partition_of.iter().copied().zip(outs.iter()).collect();
    order.sort_by_key(|(p, _)| *p);
    order.into_iter().map(|(_, o)| o).collect()
}

fn scalars(bufs: &[Buffer]) -> Result<Vec<f32>> {
    bufs.iter().map(|b| Ok(b.to_host::<f32>()?[0])).collect()
}

/// Rows `[rank * n / size, (rank + 1) * n / size)` of every micro-batch of
/// `n = rows / accumulation` rows.
fn rows_of(b: &data::Batch, accumulation: usize, rank: usize, size: usize) -> data::Batch {
    let micro = b.batch / accumulation;
    let share = micro / size;
    let t = b.seq_len;
    fn take<T: Copy>(
        v: &[T],
        accumulation: usize,
        micro: usize,
        share: usize,
        rank: usize,
        t: usize,
    ) -> Vec<T> {
        (0..accumulation)
            .flat_map(|a| {
                let from = (a * micro + rank * share) * t;
                v[from..from + share * t].iter().copied()
            })
            .collect()
    }
    data::Batch {
        tokens: take(&b.tokens, accumulation, micro, share, rank, t),
        targets: take(&b.targets, accumulation, micro, share, rank, t),
        loss_mask: take(&b.loss_mask, accumulation, micro, share, rank, t),
        segment_ids: take(&b.segment_ids, accumulation, micro, share, rank, t),
        positions: take(&b.positions, accumulation, micro, share, rank, t),
        batch: share * accumulation,
        seq_len: t,
    }
}
