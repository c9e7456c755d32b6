//! The reward model: the Gemma backbone and a bias-free `score` head
//! (`d_model -> 1`) on the final-normed hidden state of each row's last
//! real token, as transformers' `GemmaForSequenceClassification` with
//! `num_labels = 1`.
//!
//! The last real token is the last position whose segment id is not 0
//! (rows are right padded, one document per row). transformers finds it
//! as the rightmost token that is not `pad_token_id`; the two agree as
//! long as no real token is the pad id, which segment ids never confuse.

use hlo::{Builder, DType, TensorType, Value};

use crate::{Constrain, Error, Gemma, Result, Tokens};

impl Gemma<'_> {
    /// Rewards `[B]` (f32), one per row of `t`: the model must have a
    /// score head ([`crate::GemmaConfig::score_head`]).
    pub fn score(&self, b: &mut Builder, t: &Tokens, c: &dyn Constrain) -> Result<Value> {
        if !self.cfg.score_head {
            return Err(Error::config(
                "score_head",
                false,
                "a reward model (score_head = true, GemmaForSequenceClassification) to score rows",
            ));
        }
        let h = self.backbone(b, t, c)?;
        let (eps, norm) = (self.cfg.norm_eps, self.final_norm());
        let w = *self.params.last().expect("score head checked above");
        let segment_ids = t.segment_ids;
        Ok(b.scope("score", |b| -> hlo::Result<Value> {
            let h = b.scope("model.norm", |b| b.rms_norm(h, norm, eps))?;
            let h = b.convert(h, DType::F32)?; // [B, T, d]
            let [bs, tl, d] = [b.dims(h)[0], b.dims(h)[1], b.dims(h)[2]];
            let pick = last_real_token(b, segment_ids)?; // [B, T] one-hot, f32
            let pick = b.broadcast_in_dim(pick, &[bs, tl, d], &[0, 1])?;
            let picked = b.mul(h, pick)?;
            let pooled = b.sum(picked, &[1])?; // [B, d]
            let r = b.linear(pooled, w)?; // [B, 1]
            b.reshape(r, &[bs])
        })?)
    }
}

/// `[B, T]` f32: 1 at each row's last position with a nonzero segment id
/// (the row's length minus one), 0 elsewhere; all 0 for an empty row.
fn last_real_token(b: &mut Builder, segment_ids: Value) -> hlo::Result<Value> {
    let [bs, tl] = [b.dims(segment_ids)[0], b.dims(segment_ids)[1]];
    let zero = b.constant(0.0, TensorType::new(b.dtype(segment_ids), vec![bs, tl]));
    let real = b.ne(segment_ids, zero)?;
    let real = b.convert(real, DType::F32)?;
    let len = b.sum(real, &[1])?; // [B]
    let last = b.add_scalar(len, -1.0)?;
    let last = b.broadcast_in_dim(last, &[bs, tl], &[0])?;
    let pos = b.iota(TensorType::f32([bs, tl]), 1)?;
    let hit = b.eq(pos, last)?;
    b.convert(hit, DType::F32)
}
