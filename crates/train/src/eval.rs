//! Scoring a model on token rows: mean next-token cross-entropy (natural
//! log) over every predicted position of every row, and perplexity.

use std::path::Path;

use gemma::{ComputeOptions, Gemma, Tokens, Unconstrained, param_specs, token_loss};
use hlo::{Builder, TensorType};

use crate::{Error, Result};

/// The result of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean next-token loss in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Number of predicted positions (a row of n tokens gives n - 1).
    pub tokens: u64,
}

/// Scores the Hugging Face model directory or meshtrain checkpoint in `dir` on the `tokens` file (JSON
/// `{"input_ids": [[...]]}` or JSONL), `batch` rows at a time, on `client`'s
/// first device.
pub fn evaluate(
    client: &pjrt::Client,
    dir: &Path,
    tokens: &Path,
    batch: usize,
) -> Result<EvalResult> {
    let ck = open_model(dir)?;
    let cfg = ck.config;
    let rows = data::read_token_rows(tokens, cfg.max_seq_len)?;
    let t = rows.iter().map(Vec::len).max().unwrap_or(1).max(2);
    if let Some((r, id)) = rows.iter().enumerate().find_map(|(r, row)| {
        row.iter()
            .find(|&&id| id as usize >= cfg.vocab_size)
            .map(|&id| (r, id))
    }) {
        return Err(Error::config(
            tokens.display().to_string(),
            format!("row {r}"),
            format!(
                "token id {id} is outside the vocabulary of {} ids",
                cfg.vocab_size
            ),
        ));
    }
    let batch = batch.max(1);
    let (b_, t_) = (batch as i64, t as i64);

    let mut b = Builder::new("eval");
    let specs = param_specs(&cfg);
    let params = gemma::declare_parameters(&mut b, &cfg);
    let [ids, positions, segment_ids, targets] = ["ids", "positions", "segment_ids", "targets"]
        .map(|n| b.parameter(n, TensorType::i32([b_, t_])));
    let mask = b.parameter("mask", TensorType::f32([b_, t_]));
    let model = Gemma::new(&cfg, &params, ComputeOptions::default())?;
    let logits = model.forward(
        &mut b,
        &Tokens {
            ids,
            positions,
            segment_ids,
        },
        &Unconstrained,
    )?;
    let (sum, count) = token_loss(&mut b, logits, targets, mask)?;
    let program = b.build(&[sum, count])?;
    let exe = client.compile(&program.to_mlir(), &pjrt::CompileOptions::single())?;

    let weights = specs
        .iter()
        .zip(&ck.params)
        .map(|(s, p)| {
            client.buffer_from_host(
                &p.data,
                &s.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                0,
            )
        })
        .collect::<pjrt::Result<Vec<_>>>()?;
    let (mut total, mut n) = (0f64, 0f64);
    for chunk in rows.chunks(batch) {
        let mut host = [
            vec![0i32; batch * t],
            vec![0i32; batch * t],
            vec![0i32; batch * t],
            vec![0i32; batch * t],
        ];
        let mut m = vec![0f32; batch * t];
        for (r, row) in chunk.iter().enumerate() {
            for (i, &id) in row.iter().enumerate() {
                let k = r * t + i;
                host[0][k] = id as i32;
                host[1][k] = i as i32;
                host[2][k] = 1;
                if i + 1 < row.len() {
                    host[3][k] = row[i + 1] as i32;
                    m[k] = 1.0;
                }
            }
        }
        let mut args: Vec<pjrt::Buffer> = Vec::new();
        for h in &host {
            args.push(client.buffer_from_host(h, &[b_, t_], 0)?);
        }
        args.push(client.buffer_from_host(&m, &[b_, t_], 0)?);
        let list: Vec<&pjrt::Buffer> = weights.iter().chain(&args).collect();
        let out = exe.execute(&[list])?;
        total += out[0][0].to_host::<f32>()?[0] as f64;
        n += out[0][1].to_host::<f32>()?[0] as f64;
    }
    let loss = total / n.max(1.0);
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens: n as u64,
    })
}

/// The model in `dir`, a meshtrain checkpoint or a Hugging Face model
/// directory; anything else is an error saying what `dir` is not and what
/// was expected.
fn open_model(dir: &Path) -> Result<gemma::hf::Checkpoint> {
    if crate::checkpoint::is_checkpoint(dir) {
        return crate::checkpoint::Checkpoint::open(dir)?.model();
    }
    if dir.join("config.json").is_file() {
        return Ok(gemma::hf::load(dir)?);
    }
    let message = if !dir.exists() {
        "no such directory; expected a Hugging Face model directory (config.json and \
         *.safetensors, e.g. a run's final/) or a meshtrain checkpoint \
         (run_dir/checkpoints/step_N)"
            .to_string()
    } else if !dir.is_dir() {
        "a file; expected a Hugging Face model directory or a meshtrain checkpoint".to_string()
    } else if let Some(inside) = crate::checkpoint::models_inside(dir) {
        format!("not a model but {}", inside.advice(true))
    } else {
        "neither a Hugging Face model directory (no config.json) nor a meshtrain checkpoint \
         (no manifest.json); expected e.g. a run's final/ or run_dir/checkpoints/step_N"
            .to_string()
    };
    Err(Error::NotAModel {
        path: dir.to_owned(),
        message,
    })
}
