//! Log-likelihood of continuations (multiple-choice scoring): one forward
//! program per (batch, length) bucket over `context + continuation` rows,
//! summing the log-probabilities of the continuation's tokens on the device.

use std::time::Instant;

use gemma::{Gemma, Tokens};
use hlo::{Builder, DType, Sharding, TensorType, Value};

use super::{Generator, run};
use crate::{Error, Result};

impl Generator {
    /// For each `(context, continuation)` pair, the summed natural-log
    /// probability of the continuation's tokens after the context (as
    /// lm-evaluation-harness scores a choice), `max_batch` rows at a time.
    /// A row longer than the model's context keeps its last tokens.
    pub fn continuation_logprobs(
        &mut self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        max_batch: usize,
    ) -> Result<Vec<f64>> {
        let max_len = self.cfg.max_seq_len;
        let mut rows: Vec<(Vec<u32>, usize)> = Vec::with_capacity(pairs.len());
        for (i, (ctx, cont)) in pairs.iter().enumerate() {
            if ctx.is_empty() || cont.is_empty() {
                return Err(Error::config(
                    "choices",
                    format!("pair {i}"),
                    "needs a non-empty context (e.g. <bos>) and a non-empty continuation",
                ));
            }
            let mut all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            if let Some(&id) = all.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                return Err(Error::config(
                    "choices",
                    format!("pair {i}"),
                    format!(
                        "token id {id} is outside the vocabulary of {} ids",
                        self.cfg.vocab_size
                    ),
                ));
            }
            if all.len() > max_len {
                all.drain(..all.len() - max_len);
            }
            let n_cont = cont.len().min(all.len() - 1);
            rows.push((all, n_cont));
        }
        let mut out = vec![0f64; rows.len()];
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].0.len());
        for chunk in order.chunks(max_batch.max(1)) {
            let longest = chunk.iter().map(|&i| rows[i].0.len()).max().unwrap_or(1);
            let (b, t) = (
                chunk.len().next_power_of_two(),
                longest.next_power_of_two().max(8),
            );
            let mut host = [
                vec![0i32; b * t],
                vec![0i32; b * t],
                vec![0i32; b * t],
                vec![0i32; b * t],
            ];
            let mut mask = vec![0f32; b * t];
            for (r, &i) in chunk.iter().enumerate() {
                let (ids, n_cont) = &rows[i];
                let first_target = ids.len() - n_cont;
                for (k, &id) in ids.iter().enumerate() {
                    host[0][r * t + k] = id as i32;
                    host[1][r * t + k] = k as i32;
                    host[2][r * t + k] = 1;
                    if k + 1 < ids.len() {
                        host[3][r * t + k] = ids[k + 1] as i32;
                        mask[r * t + k] = (k + 1 >= first_target) as i32 as f32;
                    }
                }
            }
            let scores = self.score_batch(b, t, &host, &mask)?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = scores[r] as f64;
            }
        }
        Ok(out)
    }

    fn score_batch(
        &mut self,
        b: usize,
        t: usize,
        host: &[Vec<i32>; 4],
        mask: &[f32],
    ) -> Result<Vec<f32>> {
        let slot = |name: &str, dtype| self.dev.slot(name, dtype, &[("batch", b), ("seq", t)]);
        let slots = [
            slot("ids", DType::I32),
            slot("positions", DType::I32),
            slot("segment_ids", DType::I32),
            slot("targets", DType::I32),
            slot("mask", DType::F32),
        ];
        if !self.scorers.contains_key(&(b, t)) {
            let t0 = Instant::now();
            let mut bld = Builder::new("score_choices");
            let sharded = self.dev.partitions() > 1;
            if sharded {
                bld.set_mesh(hlo::Mesh::new(self.dev.plan.mesh.axes())?);
            }
            let declare = |bld: &mut Builder, s: &crate::step::Slot| -> hlo::Result<Value> {
                let ty = TensorType::new(
                    s.dtype,
                    s.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                );
                if sharded {
                    bld.parameter_sharded(
                        &s.name,
                        ty,
                        Sharding {
                            dims: s.axes.clone(),
                        },
                    )
                } else {
                    Ok(bld.parameter(&s.name, ty))
                }
            };
            let params: Vec<Value> = self
                .params
                .iter()
                .map(|s| declare(&mut bld, s))
                .collect::<hlo::Result<_>>()?;
            let ins: Vec<Value> = slots
                .iter()
                .map(|s| declare(&mut bld, s))
                .collect::<hlo::Result<_>>()?;
            let model = Gemma::new(&self.cfg, &params, self.options())?;
            let tokens = Tokens {
                ids: ins[0],
                positions: ins[1],
                segment_ids: ins[2],
            };
            let logits = model.forward(&mut bld, &tokens, &self.dev.plan)?;
            let sums = bld.scope("logprobs", |bld| -> hlo::Result<Value> {
                let lp = gemma::token_log_probs(bld, logits, ins[3])?;
                let lp = bld.mul(lp, ins[4])?;
                bld.sum(lp, &[1]) // [B]
            })?;
            let program = bld.build(&[sums])?;
            let exe = self.dev.compile(&program)?;
            self.stats.compile_seconds += t0.elapsed().as_secs_f64();
            self.scorers.insert((b, t), exe);
        }
        let mut inputs = Vec::with_capacity(5);
        for (s, h) in slots.iter().zip(host.iter()) {
            inputs.push(self.dev.put(s, h)?);
        }
        inputs.push(self.dev.put(&slots[4], mask)?);
        let outs = run(&self.scorers[&(b, t)], &self.weights, &[&inputs], &[])?;
        // The scores are replicated: any partition holds all of them.
        Ok(outs[0][0].to_host::<f32>()?)
    }
}
