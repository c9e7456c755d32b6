//! Evaluation tasks beyond the loss: the Gemma report's memorization test
//! and multiple-choice scoring by log-likelihood (MMLU, ARC, HellaSwag as
//! lm-evaluation-harness runs them).

use std::path::Path;

use serde::Serialize;

use crate::generate::{GenerateOptions, Generator, Sampling};
use crate::{Error, Result};

/// Settings of the memorization test.
#[derive(Clone, Debug)]
pub struct MemorizationOptions {
    /// Prompt tokens taken from the start of each document.
    pub prompt_len: usize,
    /// Tokens generated greedily and compared with the document's next ones.
    pub continuation_len: usize,
    /// Documents sampled when the source has more.
    pub docs: usize,
    /// Seed of that sample.
    pub seed: u64,
    /// Rows per generation batch.
    pub max_batch: usize,
}

impl Default for MemorizationOptions {
    fn default() -> Self {
        MemorizationOptions {
            prompt_len: 50,
            continuation_len: 50,
            docs: 10_000,
            seed: 0,
            max_batch: 32,
        }
    }
}

/// The memorization test's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemorizationResult {
    /// Documents tested (sampled and long enough).
    pub docs: usize,
    /// How many of them the model continued exactly.
    pub memorized: usize,
    /// `memorized / docs`.
    pub rate: f64,
    /// Their indices in the source (row of the tokens file, or document
    /// number across the shards in manifest order).
    pub memorized_indices: Vec<usize>,
    /// Sampled documents shorter than `prompt_len + continuation_len`.
    pub skipped: usize,
}

/// `k` of `0..n` chosen at random (seeded), ascending; all of them if `k >= n`.
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut state = seed ^ 0x6d65_6d6f;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // Partial Fisher-Yates over a sparse permutation.
    let mut swapped = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let j = i + (next() % (n - i) as u64) as usize;
        let vj = *swapped.get(&j).unwrap_or(&j);
        let vi = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, vi);
        out.push(vj);
    }
    out.sort_unstable();
    out
}

/// Documents from a token shard directory: `k` sampled (seeded) of all,
/// each as `<bos>` + its tokens (as training saw it), with its index.
pub fn sample_shard_docs(dir: &Path, k: usize, seed: u64) -> Result<Vec<(usize, Vec<u32>)>> {
    let manifest = data::shard::Manifest::read(dir)?;
    let total = manifest.documents as usize;
    let picks = sample_indices(total, k, seed);
    let mut out = Vec::with_capacity(picks.len());
    let (mut base, mut it) = (0usize, picks.iter().peekable());
    for info in &manifest.shards {
        let n = info.documents as usize;
        if it.peek().is_some_and(|&&i| i < base + n) {
            let shard = data::shard::Shard::open(&dir.join(&info.file))?;
            while let Some(&&i) = it.peek().filter(|&&&i| i < base + n) {
                let mut doc = vec![manifest.bos_id];
                shard.read_doc((i - base) as u64, &mut doc);
                out.push((i, doc));
                it.next();
            }
        }
        base += n;
    }
    Ok(out)
}

/// The memorization test on `docs` (index, tokens): the first
/// `prompt_len` tokens are the prompt, the greedy continuation of
/// `continuation_len` tokens (no early stop) must equal the next ones.
pub fn memorization(
    generator: &mut Generator,
    docs: &[(usize, Vec<u32>)],
    opts: &MemorizationOptions,
) -> Result<MemorizationResult> {
    let need = opts.prompt_len + opts.continuation_len;
    if opts.prompt_len == 0 || opts.continuation_len == 0 {
        return Err(Error::config(
            "eval",
            "--prompt-len",
            "prompt and continuation lengths must be at least 1",
        ));
    }
    let (long, short): (Vec<_>, Vec<_>) = docs.iter().partition(|(_, d)| d.len() >= need);
    let prompts: Vec<Vec<u32>> = long
        .iter()
        .map(|(_, d)| d[..opts.prompt_len].to_vec())
        .collect();
    let gen_opts = GenerateOptions {
        max_new_tokens: opts.continuation_len,
        sampling: Sampling::GREEDY,
        num_samples: 1,
        seed: 0,
        stop_ids: vec![],
        max_batch: opts.max_batch,
    };
    let out = generator.generate(&prompts, &gen_opts, &mut |_| {})?;
    let memorized_indices: Vec<usize> = long
        .iter()
        .zip(&out)
        .filter(|((_, d), g)| g.samples[0] == d[opts.prompt_len..need])
        .map(|((i, _), _)| *i)
        .collect();
    let n = long.len();
    Ok(MemorizationResult {
        docs: n,
        memorized: memorized_indices.len(),
        rate: memorized_indices.len() as f64 / n.max(1) as f64,
        memorized_indices,
        skipped: short.len(),
    })
}

/// Memorized continuations that hold personal or sensitive data, found by
/// the detector that filters pretraining data ([`data::pii::scan`]), as the
/// Gemma report counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemorizedPii {
    /// Memorized continuations with at least one personal finding (email,
    /// phone number, IP address).
    pub personal: usize,
    /// Memorized continuations with at least one sensitive finding (card
    /// number, SSN, secret).
    pub sensitive: usize,
    /// Findings by kind (`email`, `phone`, ...) over all of them.
    pub findings: std::collections::BTreeMap<String, usize>,
}

/// Scans the memorized continuations of `result` (the tokens after each
/// memorized document's prompt), decoded to text by `decode`.
pub fn memorized_pii(
    docs: &[(usize, Vec<u32>)],
    result: &MemorizationResult,
    opts: &MemorizationOptions,
    decode: impl Fn(&[u32]) -> Result<String>,
) -> Result<MemorizedPii> {
    let need = opts.prompt_len + opts.continuation_len;
    let mut out = MemorizedPii::default();
    for (_, d) in docs
        .iter()
        .filter(|(i, d)| d.len() >= need && result.memorized_indices.contains(i))
    {
        let found = data::pii::scan(&decode(&d[opts.prompt_len..need])?);
        let c = data::pii::count_classes(&found);
        out.personal += usize::from(c.personal > 0);
        out.sensitive += usize::from(c.sensitive > 0);
        for f in &found {
            *out.findings.entry(f.kind.name().to_string()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// One multiple-choice item as token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceItem {
    /// The context (question), `<bos>` included for text items.
    pub context: Vec<u32>,
    /// Each choice's continuation tokens.
    pub choices: Vec<Vec<u32>>,
    /// Index of the right choice.
    pub answer: usize,
    /// Each choice's length for the normalised score: characters for text
    /// items (as lm-evaluation-harness), tokens for token items.
    pub lengths: Vec<usize>,
}

/// Reads `{"context": "...", "choices": ["...", ...], "answer": i}` per
/// line (text, needs `tokenizer`) or the same with token-id arrays.
pub fn read_choice_items(
    path: &Path,
    tokenizer: Option<&data::Tokenizer>,
) -> Result<Vec<ChoiceItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let file = path.display().to_string();
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |key: &str| format!("line {}: {key}", n + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::config(&file, at("(line)"), format!("not JSON: {e}")))?;
        let choices = v
            .get("choices")
            .and_then(|c| c.as_array())
            .filter(|c| c.len() >= 2)
            .ok_or_else(|| {
                Error::config(
                    &file,
                    at("choices"),
                    "missing; expected a list of at least 2 choices",
                )
            })?;
        let answer = v
            .get("answer")
            .and_then(|a| a.as_u64())
            .map(|a| a as usize)
            .filter(|&a| a < choices.len())
            .ok_or_else(|| {
                Error::config(
                    &file,
                    at("answer"),
                    format!(
                        "{}: expected the index of the right choice (0..{})",
                        v.get("answer").unwrap_or(&serde_json::Value::Null),
                        choices.len()
                    ),
                )
            })?;
        let context = v
            .get("context")
            .ok_or_else(|| Error::config(&file, at("context"), "missing"))?;
        let item =
            if let Some(ctx) = context.as_str() {
                let tok = tokenizer.ok_or_else(|| {
                    Error::config(
                        &file,
                        at("context"),
                        "is text but the model has no tokenizer: give --tokenizer gemma|FILE",
                    )
                })?;
                let texts: Vec<&str> = choices
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        c.as_str().ok_or_else(|| {
                            Error::config(&file, at(&format!("choices[{i}]")), "expected a string")
                        })
                    })
                    .collect::<Result<_>>()?;
                text_item(tok, ctx, &texts, answer)?
            } else {
                let ids =
                    |x: &serde_json::Value, key: &str| -> Result<Vec<u32>> {
                        x.as_array()
                    .filter(|a| !a.is_empty())
                    .and_then(|a| {
                        a.iter()
                            .map(|t| t.as_u64().filter(|&t| t <= u32::MAX as u64).map(|t| t as u32))
                            .collect::<Option<Vec<u32>>>()
                    })
                    .ok_or_else(|| {
                        Error::config(
                            &file,
                            at(key),
                            "expected a non-empty string, or a non-empty array of token ids",
                        )
                    })
                    };
                let context = ids(context, "context")?;
                let choices: Vec<Vec<u32>> = choices
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ids(c, &format!("choices[{i}]")))
                    .collect::<Result<_>>()?;
                let lengths = choices.iter().map(Vec::len).collect();
                ChoiceItem {
                    context,
                    choices,
                    answer,
                    lengths,
                }
            };
        items.push(item);
    }
    if items.is_empty() {
        return Err(Error::config(&file, "(file)", "holds no items"));
    }
    Ok(items)
}

/// Tokenizes a text item as lm-evaluation-harness does: trailing spaces of
/// the context move to the continuation; the continuation's tokens are
/// those of `context + choice` after the context's.
fn text_item(
    tok: &data::Tokenizer,
    context: &str,
    choices: &[&str],
    answer: usize,
) -> Result<ChoiceItem> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let mut ctx = vec![tok.bos_id()];
    ctx.extend(tok.encode(trimmed)?);
    let mut out = Vec::with_capacity(choices.len());
    for c in choices {
        let cont = format!("{moved}{c}");
        let mut whole = vec![tok.bos_id()];
        whole.extend(tok.encode(&format!("{trimmed}{cont}"))?);
        let ids = if whole.len() > ctx.len() && whole[..ctx.len()] == ctx[..] {
            whole[ctx.len()..].to_vec()
        } else {
            tok.encode(&cont)?
        };
        out.push(ids);
    }
    Ok(ChoiceItem {
        context: ctx,
        choices: out,
        answer,
        lengths: choices.iter().map(|c| c.chars().count().max(1)).collect(),
    })
}

/// One item's scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemScore {
    /// Summed log-probability of each choice.
    pub logprobs: Vec<f64>,
    /// The choice with the highest log-probability.
    pub pred: usize,
    /// The choice with the highest log-probability per unit of length.
    pub pred_norm: usize,
    /// The right choice.
    pub answer: usize,
}

/// Accuracy over items.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChoiceResult {
    /// Items scored.
    pub items: usize,
    /// Fraction whose highest log-probability choice is the answer.
    pub accuracy: f64,
    /// The same with length-normalised log-probabilities.
    pub accuracy_norm: f64,
    /// Per item.
    pub details: Vec<ItemScore>,
}

/// Scores every item's choices by log-likelihood.
pub fn score_choices(
    generator: &mut Generator,
    items: &[ChoiceItem],
    max_batch: usize,
) -> Result<ChoiceResult> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = items
        .iter()
        .flat_map(|it| it.choices.iter().map(|c| (it.context.clone(), c.clone())))
        .collect();
    let lp = generator.continuation_logprobs(&pairs, max_batch)?;
    let argmax =
        |xs: &[f64]| (0..xs.len()).fold(0, |best, i| if xs[i] > xs[best] { i } else { best });
    let mut details = Vec::with_capacity(items.len());
    let mut at = 0;
    for it in items {
        let logprobs = lp[at..at + it.choices.len()].to_vec();
        at += it.choices.len();
        let norm: Vec<f64> = logprobs
            .iter()
            .zip(&it.lengths)
            .map(|(l, &n)| l / n as f64)
            .collect();
        details.push(ItemScore {
            pred: argmax(&logprobs),
            pred_norm: argmax(&norm),
            logprobs,
            answer: it.answer,
        });
    }
    let n = details.len().max(1) as f64;
    Ok(ChoiceResult {
        items: details.len(),
        accuracy: details.iter().filter(|d| d.pred == d.answer).count() as f64 / n,
        accuracy_norm: details.iter().filter(|d| d.pred_norm == d.answer).count() as f64 / n,
        details,
    })
}
