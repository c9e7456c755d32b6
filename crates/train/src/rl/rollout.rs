//! One RL step's rows: the step's prompts, `rl.samples_per_prompt`
//! responses sampled for each from the current policy (the training
//! parameters on the devices, no copy), laid out for the step program.

use gemma::GemmaConfig;
use pjrt::Buffer;

use crate::device::{PerPartition, Placement};
use crate::generate::{Devices, GenerateOptions, Generator, Sampling};
use crate::state::DeviceState;
use crate::step::{Plan, Slot};
use crate::{Error, Result, TrainConfig};

/// Samples responses with the training parameters.
pub(crate) struct Rollout {
    generator: Generator,
    opts: GenerateOptions,
    params: usize,
    seq_len: usize,
}

impl Rollout {
    /// A generator over `client`'s devices laid out as the run's
    /// (`plan`, `at`), reading the parameters laid out as `params`.
    pub(crate) fn new(
        cfg: &TrainConfig,
        model: &GemmaConfig,
        client: &pjrt::Client,
        plan: &Plan,
        at: &Placement,
        params: &[Slot],
    ) -> Result<Rollout> {
        // invariant: `rl::check` refuses train.objective = "rl" without [rl].
        let rl = cfg.rl.as_ref().expect("[rl] is checked");
        let dtype = cfg.compute_options()?.dtype;
        let dev = Devices::with_client(client.clone(), model, &cfg.runtime, &cfg.mesh, dtype)?;
        let generator = Generator::without_weights(dev, model, dtype);
        if generator.devices().at.device_of != at.device_of
            || generator.devices().plan.mesh != plan.mesh
            || generator.param_slots() != params
        {
            return Err(Error::config(
                "train",
                "train.objective",
                "\"rl\": the sampler's devices or parameter layout differ from the training \
                 step's (one host, every device of the mesh expected)",
            ));
        }
        let tokenizer = match cfg.data.tokenizer.as_deref() {
            Some(spec) => Some(crate::generate::source::load_tokenizer(spec)?),
            None => None,
        };
        let opts = GenerateOptions {
            max_new_tokens: rl.max_new_tokens,
            sampling: Sampling {
                temperature: rl.temperature as f32,
                top_k: 0,
                top_p: 1.0,
            },
            num_samples: rl.samples_per_prompt,
            seed: cfg.model.seed,
            stop_ids: crate::generate::source::stop_ids(tokenizer.as_ref(), model.vocab_size),
            max_batch: cfg.data.batch_size * rl.samples_per_prompt,
        };
        Ok(Rollout {
            generator,
            opts,
            params: params.len(),
            seq_len: cfg.data.seq_len,
        })
    }

    /// The rows of step `step`: each prompt of `prompts` (a loader batch,
    /// one prompt per row) followed by each of its sampled responses.
    pub(crate) fn rows(
        &mut self,
        prompts: &data::Batch,
        state: &PerPartition<DeviceState>,
        step: u64,
    ) -> Result<data::Batch> {
        let list = prompt_ids(prompts);
        let weights: Vec<&[Buffer]> = state
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| &s[..self.params])
                    .ok_or_else(|| Error::config("train", "rl", "a partition is not local"))
            })
            .collect::<Result<_>>()?;
        let mut opts = self.opts.clone();
        // A fresh draw every step, the same after a resume.
        opts.seed = hlo::hash_combine_host(opts.seed as u32, step as u32) as u64 | (step << 32);
        for (i, p) in list.iter().enumerate() {
            if p.len() + opts.max_new_tokens > self.seq_len {
                return Err(Error::config(
                    "train",
                    "data.seq_len",
                    format!(
                        "step {step}: prompt {i} holds {} tokens; with rl.max_new_tokens = {} \
                         they exceed data.seq_len = {} (raise data.seq_len or shorten the prompts)",
                        p.len(),
                        opts.max_new_tokens,
                        self.seq_len
                    ),
                ));
            }
        }
        let out = self
            .generator
            .generate_with(&weights, &list, &opts, &mut |_| {})?;
        let pairs: Vec<(&[u32], &[u32])> = out
            .iter()
            .flat_map(|g| {
                g.samples
                    .iter()
                    .map(|s| (g.prompt.as_slice(), s.as_slice()))
            })
            .collect();
        Ok(layout(&pairs, self.seq_len, prompts_pad(prompts)))
    }
}

/// Each row's prompt: its first document's tokens.
fn prompt_ids(b: &data::Batch) -> Vec<Vec<u32>> {
    (0..b.batch)
        .map(|r| {
            let row = r * b.seq_len..(r + 1) * b.seq_len;
            b.tokens[row.clone()]
                .iter()
                .zip(&b.segment_ids[row])
                .filter(|(_, s)| **s == 1)
                .map(|(&t, _)| t as u32)
                .collect()
        })
        .collect()
}

/// The padding id of a loader batch (what its padding positions hold).
fn prompts_pad(b: &data::Batch) -> u32 {
    b.tokens
        .iter()
        .zip(&b.segment_ids)
        .find(|(_, s)| **s == 0)
        .map_or(data::tokenizer::PAD_ID, |(&t, _)| t as u32)
}

/// Rows of `(prompt, response)`, right padded to `seq_len`: one segment
/// each, the loss on the predictions of the response tokens.
pub fn layout(rows: &[(&[u32], &[u32])], seq_len: usize, pad: u32) -> data::Batch {
    let mut b = data::Batch::new(rows.len(), seq_len, pad);
    for (r, (prompt, response)) in rows.iter().enumerate() {
        let ids: Vec<u32> = prompt.iter().chain(response.iter()).copied().collect();
        let at = r * seq_len;
        for (t, &id) in ids.iter().enumerate().take(seq_len) {
            b.tokens[at + t] = id as i32;
            b.segment_ids[at + t] = 1;
            b.positions[at + t] = t as i32;
            if t + 1 < ids.len() {
                b.targets[at + t] = ids[t + 1] as i32;
                if t + 1 >= prompt.len() {
                    b.loss_mask[at + t] = 1.0;
                }
            }
        }
    }
    b
}
