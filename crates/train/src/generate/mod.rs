//! Generation: a [`Generator`] holds a model's weights on the devices (any
//! mesh of the training rules, so a 7B decodes tensor-parallel) and turns
//! prompts into continuations with a prefill program and a decode-step
//! program per bucket (batch, prompt length, cache length), each compiled
//! once and cached.
//!
//! - Prompts of different lengths share a batch by left padding with
//!   per-row positions ([`gemma::decode`]); the KV cache stays on the
//!   devices and is donated from step to step, as are the last tokens and
//!   the slot counter: a decode step moves nothing to the device, and only
//!   the `[B]` new tokens come back (for stopping and streaming).
//! - The next token is chosen on the device: argmax (`temperature = 0`) or
//!   a draw from `softmax(logits / T)` after top-k and top-p
//!   ([`hlo::Builder::sample_categorical`]). Draws use counter-based random
//!   numbers keyed by (seed, prompt, sample, position), so the same seed
//!   gives the same samples whatever the batch, bucket or mesh.
//! - A row stops at one of [`GenerateOptions::stop_ids`] (kept as its last
//!   token) or after `max_new_tokens`; the batch stops when all rows have.
//!
//! [`Generator::generate`] is the library API the CLI (`meshtrain
//! generate`), the memorization eval and fine-tuning loops use.

mod devices;
pub mod kernels;
mod programs;
mod score;
pub mod source;

use std::collections::HashMap;
use std::time::Instant;

use gemma::GemmaConfig;
use hlo::DType;
use pjrt::Buffer;

pub use devices::Devices;
use programs::{Bucket, Choice, ModelSpec};

use crate::exec::Exe;
use crate::shard::{insert, shard_ranges};
use crate::step::Slot;
use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties included); 0 = off.
    pub top_k: u32,
    /// Then keep the smallest set of most likely tokens whose probability
    /// reaches `top_p` (after renormalising); 1.0 = off.
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens per sample at most.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Samples per prompt.
    pub num_samples: usize,
    /// Seed of the random draws.
    pub seed: u64,
    /// A sample ends after one of these tokens (empty: never early).
    pub stop_ids: Vec<u32>,
    /// Rows (prompt x sample) per batch at most.
    pub max_batch: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            sampling: Sampling::GREEDY,
            num_samples: 1,
            seed: 0,
            stop_ids: vec![data::tokenizer::EOS_ID],
            max_batch: 32,
        }
    }
}

impl GenerateOptions {
    /// Checks the numbers (named as the CLI flags).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config("generate", key, msg));
        let s = &self.sampling;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return bad(
                "--temperature",
                format!("{}: expected a number >= 0", s.temperature),
            );
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("--top-p", format!("{}: expected 0 < p <= 1", s.top_p));
        }
        if self.num_samples == 0 || self.max_batch == 0 {
            return bad(
                "--num-samples",
                "num_samples and max_batch must be at least 1".into(),
            );
        }
        Ok(())
    }

    fn choice(&self) -> Choice {
        let s = &self.sampling;
        if s.temperature == 0.0 {
            Choice::Greedy
        } else {
            Choice::Sample {
                top_k: s.top_k > 0,
                top_p: s.top_p < 1.0,
            }
        }
    }
}

/// One prompt's samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// New token ids per sample (a stop token, if reached, is the last).
    pub samples: Vec<Vec<u32>>,
}

/// A token as it is generated (for streaming).
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent {
    /// Index of the prompt.
    pub prompt: usize,
    /// Index of the sample of that prompt.
    pub sample: usize,
    /// The new token.
    pub token: u32,
}

/// Time spent, summed over calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateStats {
    /// Compiling programs.
    pub compile_seconds: f64,
    /// Prefill programs, uploads included.
    pub prefill_seconds: f64,
    /// Decode steps, reading back the tokens included.
    pub decode_seconds: f64,
    /// Decode steps run.
    pub decode_steps: u64,
    /// Rows of those steps that were real (not batch padding).
    pub decode_rows: u64,
}

/// A model on the devices, ready to generate.
pub struct Generator {
    dev: Devices,
    cfg: GemmaConfig,
    compute: DType,
    params: Vec<Slot>,
    weights: Vec<Vec<Buffer>>,
    programs: HashMap<(bool, Bucket, Choice), Exe>,
    scorers: HashMap<(usize, usize), Exe>,
    /// Time spent so far.
    pub stats: GenerateStats,
}

/// One row of a batch: which prompt and sample it is.
struct Row<'p> {
    prompt: usize,
    sample: usize,
    ids: &'p [u32],
}

impl Generator {
    /// Puts `model`'s parameters on `dev`'s devices, computed in `dtype`
    /// (`F32`, or `BF16` as a bf16 Hugging Face model runs) and stored in
    /// `dtype` where the decode step's matmuls run as custom calls
    /// ([`Devices::decode_kernel`]), else as [`Devices::weight_dtype`] says.
    pub fn new(dev: Devices, model: &gemma::hf::Checkpoint, dtype: DType) -> Result<Generator> {
        let stored = match dev.decode_kernel(dtype) {
            Some(_) => dtype,
            None => dev.weight_dtype(dtype),
        };
        Self::with_storage(dev, model, dtype, stored)
    }

    /// [`Generator::new`] with the weights stored in `stored`: `dtype`, or
    /// f32 holding the bf16 values when `dtype` is bf16 (the same numbers,
    /// matmuls run in f32; [`gemma::Matmuls`]).
    pub fn with_storage(
        dev: Devices,
        model: &gemma::hf::Checkpoint,
        dtype: DType,
        stored: DType,
    ) -> Result<Generator> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(Error::config(
                "generate",
                "dtype",
                format!("{dtype}: expected f32 or bf16"),
            ));
        }
        if stored != dtype && stored != DType::F32 {
            return Err(Error::config(
                "generate",
                "weight dtype",
                format!("{stored} for {dtype} compute: expected {dtype} or f32"),
            ));
        }
        let weights = dev.upload_params(&model.config, &model.params, dtype, stored)?;
        let params = dev.param_slots(&model.config, stored);
        Ok(Generator {
            dev,
            cfg: model.config.clone(),
            compute: dtype,
            params,
            weights,
            programs: HashMap::new(),
            scorers: HashMap::new(),
            stats: GenerateStats::default(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &GemmaConfig {
        &self.cfg
    }

    /// The devices.
    pub fn devices(&self) -> &Devices {
        &self.dev
    }

    /// How the programs compute: in the model's dtype, nothing to
    /// rematerialise, matmuls in the stored weights' dtype, layers unrolled
    /// (decoding indexes each layer's KV cache).
    fn options(&self) -> gemma::ComputeOptions {
        let stored = self.params.first().map_or(self.compute, |s| s.dtype);
        gemma::ComputeOptions {
            dtype: self.compute,
            remat: hlo::RematPolicy::None,
            matmuls: if stored != self.compute {
                gemma::Matmuls::F32 {
                    weights_rounded: true,
                }
            } else {
                gemma::Matmuls::Compute
            },
            scan_layers: false,
        }
    }

    /// The weights on the devices, per partition in [`gemma::param_specs`] order
    /// (stored as [`Devices::weight_dtype`] says).
    pub fn weights(&self) -> &[Vec<Buffer>] {
        &self.weights
    }

    /// Generates `opts.num_samples` continuations of every prompt;
    /// `on_token` sees each new token as it comes.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<Generation>> {
        let own = std::mem::take(&mut self.weights);
        let out = self.generate_with(&own, prompts, opts, on_token);
        self.weights = own;
        out
    }

    /// A generator of `cfg` with no weights of its own: it generates with
    /// the f32 parameters it is handed ([`Generator::generate_with`]), such
    /// as a training run's, on the devices where they are (`dev` lays out
    /// the same mesh, so the same shards), computed in `dtype`.
    pub fn without_weights(dev: Devices, cfg: &GemmaConfig, dtype: DType) -> Generator {
        let params = dev.param_slots(cfg, DType::F32);
        Generator {
            dev,
            cfg: cfg.clone(),
            compute: dtype,
            params,
            weights: Vec::new(),
            programs: HashMap::new(),
            scorers: HashMap::new(),
            stats: GenerateStats::default(),
        }
    }

    /// The parameter slots the weights must be laid out as.
    pub fn param_slots(&self) -> &[Slot] {
        &self.params
    }

    /// [`Generator::generate`] with `weights`: per partition, one buffer
    /// per parameter laid out as [`Generator::param_slots`].
    pub fn generate_with<W: AsRef<[Buffer]>>(
        &mut self,
        weights: &[W],
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<Generation>> {
        if weights.len() != self.dev.partitions()
            || weights
                .iter()
                .any(|w| w.as_ref().len() != self.params.len())
        {
            return Err(Error::config(
                "generate",
                "weights",
                format!(
                    "expected {} parameters on each of {} partitions",
                    self.params.len(),
                    self.dev.partitions()
                ),
            ));
        }
        opts.validate()?;
        for (i, p) in prompts.iter().enumerate() {
            self.check_prompt(i, p, opts.max_new_tokens)?;
        }
        let mut out: Vec<Generation> = prompts
            .iter()
            .map(|p| Generation {
                prompt: p.clone(),
                samples: vec![Vec::new(); opts.num_samples],
            })
            .collect();
        if opts.max_new_tokens == 0 {
            return Ok(out);
        }
        // Rows sorted by length so that a batch's prompts have similar lengths.
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                (0..opts.num_samples).map(move |s| Row {
                    prompt: i,
                    sample: s,
                    ids: p,
                })
            })
            .collect();
        rows.sort_by_key(|r| r.ids.len());
        for batch in rows.chunks(opts.max_batch) {
            let news = self.run_batch(weights, batch, opts, on_token)?;
            for (r, new) in batch.iter().zip(news) {
                out[r.prompt].samples[r.sample] = new;
            }
        }
        Ok(out)
    }

    fn check_prompt(&self, i: usize, p: &[u32], max_new: usize) -> Result<()> {
        let key = format!("prompt {i}");
        if p.is_empty() {
            return Err(Error::config(
                "generate",
                key,
                "is empty; a prompt needs at least one token (e.g. <bos> = 2)",
            ));
        }
        if let Some(&id) = p.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::config(
                "generate",
                key,
                format!(
                    "token id {id} is outside the vocabulary of {} ids",
                    self.cfg.vocab_size
                ),
            ));
        }
        if p.len() + max_new > self.cfg.max_seq_len {
            return Err(Error::config(
                "generate",
                key,
                format!(
                    "{} prompt tokens + {max_new} new tokens exceed the model's context of {}",
                    p.len(),
                    self.cfg.max_seq_len
                ),
            ));
        }
        Ok(())
    }

    /// XLA's optimized decode-step program for `batch` greedy rows of
    /// prompts up to `prompt_len` tokens and `max_new_tokens` new ones (the
    /// bucket [`Generator::generate`] would use), to inspect what a step
    /// costs.
    pub fn decode_step_hlo(
        &mut self,
        batch: usize,
        prompt_len: usize,
        max_new_tokens: usize,
    ) -> Result<pjrt::hlo::HloSummary> {
        let bucket = bucket_of(batch, prompt_len, max_new_tokens);
        let key = (false, bucket, Choice::Greedy);
        self.ensure(key)?;
        Ok(self.programs[&key].exe.executable().optimized_hlo()?)
    }

    /// Compiles the program of `key` unless it is cached.
    fn ensure(&mut self, key: (bool, Bucket, Choice)) -> Result<()> {
        if !self.programs.contains_key(&key) {
            let t0 = Instant::now();
            let spec = ModelSpec {
                cfg: &self.cfg,
                options: self.options(),
                params: &self.params,
            };
            let (prefill, bucket, choice) = key;
            let program = if prefill {
                programs::prefill(&self.dev, &spec, bucket, choice)?
            } else {
                programs::decode(&self.dev, &spec, bucket, choice)?
            };
            let exe = self.dev.compile(&program)?;
            self.stats.compile_seconds += t0.elapsed().as_secs_f64();
            self.programs.insert(key, exe);
        }
        Ok(())
    }

    /// Generates for up to `max_batch` rows; returns each row's new tokens.
    fn run_batch<W: AsRef<[Buffer]>>(
        &mut self,
        weights: &[W],
        rows: &[Row],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent),
    ) -> Result<Vec<Vec<u32>>> {
        let max_new = opts.max_new_tokens;
        let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
        let bucket = bucket_of(rows.len(), longest, max_new);
        let choice = opts.choice();
        let t0 = Instant::now();
        // Host inputs: left-padded ids, pad counts, per-row keys, sampling numbers.
        let (b, p) = (bucket.batch, bucket.prompt);
        let mut ids = vec![0i32; b * p];
        let mut pad = vec![(p - 1) as i32; b];
        let mut keys = vec![0u32; b];
        let seed_key = hlo::mix32_host(opts.seed as u32)
            ^ hlo::mix32_host((opts.seed >> 32) as u32 ^ 0x5bd1_e995);
        for (r, row) in rows.iter().enumerate() {
            let n = row.ids.len();
            pad[r] = (p - n) as i32;
            for (i, &id) in row.ids.iter().enumerate() {
                ids[r * p + p - n + i] = id as i32;
            }
            let stream = (row.prompt * opts.num_samples + row.sample) as u32;
            keys[r] = hlo::hash_combine_host(seed_key, stream);
        }
        let s = &opts.sampling;
        let row_slots = programs::row_slots(&self.dev, b);
        let ids_slot = self
            .dev
            .slot("ids", DType::I32, &[("batch", b), ("seq", p)]);
        let inputs = vec![
            self.dev.put(&ids_slot, &ids)?,
            self.dev.put(&row_slots[0], &pad)?,
            self.dev.put(&row_slots[1], &keys)?,
            self.dev.scalar(if s.temperature > 0.0 {
                s.temperature
            } else {
                1.0
            })?,
            self.dev.put(&row_slots[3], &vec![s.top_k as i32; b])?,
            self.dev.put(&row_slots[4], &vec![s.top_p; b])?,
        ];
        let token_slot = self.dev.slot("token", DType::I32, &[("batch", b)]);

        // Prefill: the first token and the caches.
        let key = (true, bucket, choice);
        self.ensure(key)?;
        let outs = run(&self.programs[&key], weights, &[&inputs], &[])?;
        let n_cache = 2 * self.cfg.layers;
        let mut token: Vec<Buffer> = Vec::new();
        let mut caches: Vec<Vec<Buffer>> = Vec::new();
        for mut o in outs {
            let rest = o.split_off(1);
            // invariant: the prefill program's first output is the token.
            token.push(o.pop().expect("token"));
            caches.push(rest);
        }
        debug_assert!(caches.iter().all(|c| c.len() == n_cache));
        let mut state = Step {
            rows,
            new: vec![Vec::new(); rows.len()],
            done: vec![false; rows.len()],
        };
        state.record(
            &read_tokens(&self.dev, &token_slot, &token)?,
            opts,
            on_token,
        );
        self.stats.prefill_seconds += t0.elapsed().as_secs_f64();

        // Decode steps: token, slot and caches go from one step to the next.
        let t1 = Instant::now();
        let mut slot = self.dev.scalar(p as i32)?;
        let row_inputs = &inputs[1..];
        for _ in 1..max_new {
            if state.done.iter().all(|&d| d) {
                break;
            }
            let key = (false, bucket, choice);
            self.ensure(key)?;
            let lead = [token, slot];
            let outs = run(&self.programs[&key], weights, &[&lead, row_inputs], &caches)?;
            token = Vec::new();
            slot = Vec::new();
            caches = Vec::new();
            for mut o in outs {
                let rest = o.split_off(2);
                // invariant: the decode program's first two outputs are the token and the slot.
                slot.push(o.pop().expect("slot"));
                // invariant: the decode program's first two outputs are the token and the slot.
                token.push(o.pop().expect("token"));
                caches.push(rest);
            }
            self.stats.decode_steps += 1;
            self.stats.decode_rows += state.done.iter().filter(|d| !**d).count() as u64;
            state.record(
                &read_tokens(&self.dev, &token_slot, &token)?,
                opts,
                on_token,
            );
        }
        self.stats.decode_seconds += t1.elapsed().as_secs_f64();
        Ok(state.new)
    }
}

/// The rows' progress in a batch.
struct Step<'r, 'p> {
    rows: &'r [Row<'p>],
    new: Vec<Vec<u32>>,
    done: Vec<bool>,
}

impl Step<'_, '_> {
    fn record(
        &mut self,
        tokens: &[i32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent),
    ) {
        for (r, row) in self.rows.iter().enumerate() {
            if self.done[r] {
                continue;
            }
            let t = tokens[r] as u32;
            self.new[r].push(t);
            on_token(TokenEvent {
                prompt: row.prompt,
                sample: row.sample,
                token: t,
            });
            if opts.stop_ids.contains(&t) || self.new[r].len() >= opts.max_new_tokens {
                self.done[r] = true;
            }
        }
    }
}

/// Runs `exe`: per partition `p`, the weights, then `groups` (inputs, each
/// one buffer per partition), then `tail[p]` (the donated caches). Returns
/// the outputs per partition, in partition order.
fn run<W: AsRef<[Buffer]>>(
    exe: &Exe,
    weights: &[W],
    groups: &[&[Vec<Buffer>]],
    tail: &[Vec<Buffer>],
) -> Result<Vec<Vec<Buffer>>> {
    let args: Vec<Vec<&Buffer>> = exe
        .partition_of
        .iter()
        .map(|&p| {
            let mut a: Vec<&Buffer> = weights[p].as_ref().iter().collect();
            for g in groups {
                a.extend(g.iter().map(|x| &x[p]));
            }
            if let Some(t) = tail.get(p) {
                a.extend(t.iter());
            }
            a
        })
        .collect();
    let outs = exe.exe.execute(&args)?;
    // Back to partition order.
    let mut by_p: Vec<Option<Vec<Buffer>>> = (0..outs.len()).map(|_| None).collect();
    for (i, o) in outs.into_iter().enumerate() {
        by_p[exe.partition_of[i]] = Some(o);
    }
    Ok(by_p
        .into_iter()
        // invariant: every partition is local and ran.
        .map(|o| o.expect("every partition ran"))
        .collect())
}

/// The `[B]` tokens gathered from their shards.
fn read_tokens(dev: &Devices, slot: &Slot, shards: &[Buffer]) -> Result<Vec<i32>> {
    let mut out = vec![0i32; slot.shape[0]];
    let mut seen = std::collections::BTreeSet::new();
    for (p, buf) in shards.iter().enumerate() {
        let r = shard_ranges(&dev.plan.mesh, &slot.shape, &slot.axes, p);
        if seen.insert(r[0].start) {
            insert(&mut out, &slot.shape, &r, &buf.to_host::<i32>()?);
        }
    }
    Ok(out)
}

/// The bucket of `batch` rows of prompts up to `longest` tokens and
/// `max_new` new tokens: powers of two, caches in multiples of 16 slots.
fn bucket_of(batch: usize, longest: usize, max_new: usize) -> Bucket {
    let prompt = longest.next_power_of_two().max(8);
    Bucket {
        batch: batch.next_power_of_two(),
        prompt,
        cache: (prompt + max_new).div_ceil(16) * 16,
    }
}
