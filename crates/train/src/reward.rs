//! Scoring rows with a reward model (`GemmaForSequenceClassification`,
//! `num_labels = 1`): one scalar per row of any length, on one device.

use gemma::{ComputeOptions, Gemma, Tokens, Unconstrained, param_specs};
use hlo::{Builder, TensorType};

use crate::{Error, Result};

/// The reward of every row (right padded to the longest, `batch` rows per
/// program run) under the reward model `ck`; `source` names the rows in
/// errors (a file).
pub fn score_rows(
    client: &pjrt::Client,
    ck: &gemma::hf::Checkpoint,
    rows: &[Vec<u32>],
    batch: usize,
    source: &str,
) -> Result<Vec<f32>> {
    let cfg = &ck.config;
    if !cfg.score_head {
        return Err(Error::config(
            source,
            "--checkpoint",
            "is a causal LM; expected a reward model (GemmaForSequenceClassification, \
             num_labels = 1, e.g. the final/ of a train.objective = \"reward\" run)",
        ));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.is_empty() || row.len() > cfg.max_seq_len {
            return Err(Error::config(
                source,
                format!("row {r}"),
                format!(
                    "{} tokens; expected 1 to {} (model max_seq_len)",
                    row.len(),
                    cfg.max_seq_len
                ),
            ));
        }
        if let Some(id) = row.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::config(
                source,
                format!("row {r}"),
                format!(
                    "token id {id} is outside the vocabulary of {} ids",
                    cfg.vocab_size
                ),
            ));
        }
    }
    let t = rows.iter().map(Vec::len).max().unwrap_or(1);
    let batch = batch.clamp(1, rows.len().max(1));
    let (b_, t_) = (batch as i64, t as i64);
    let mut b = Builder::new("reward");
    let params = gemma::declare_parameters(&mut b, cfg);
    let [ids, positions, segment_ids] =
        ["ids", "positions", "segment_ids"].map(|n| b.parameter(n, TensorType::i32([b_, t_])));
    let model = Gemma::new(cfg, &params, ComputeOptions::default())?;
    let tokens = Tokens {
        ids,
        positions,
        segment_ids,
    };
    let r = model.score(&mut b, &tokens, &Unconstrained)?;
    let program = b.build(&[r])?;
    let exe = client.compile(&program.to_mlir(), &pjrt::CompileOptions::single())?;
    let weights = param_specs(cfg)
        .iter()
        .zip(&ck.params)
        .map(|(s, p)| {
            let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
            client.buffer_from_host(&p.data, &dims, 0)
        })
        .collect::<pjrt::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch) {
        let mut host = [
            vec![0i32; batch * t],
            vec![0i32; batch * t],
            vec![0i32; batch * t],
        ];
        for (r, row) in chunk.iter().enumerate() {
            for (i, &id) in row.iter().enumerate() {
                host[0][r * t + i] = id as i32;
                host[1][r * t + i] = i as i32;
                host[2][r * t + i] = 1;
            }
        }
        let args = host
            .iter()
            .map(|h| client.buffer_from_host(h, &[b_, t_], 0))
            .collect::<pjrt::Result<Vec<_>>>()?;
        let list: Vec<&pjrt::Buffer> = weights.iter().chain(&args).collect();
        let res = exe.execute(&[list])?;
        let rewards = res[0][0].to_host::<f32>()?;
        out.extend_from_slice(&rewards[..chunk.len()]);
    }
    Ok(out)
}
