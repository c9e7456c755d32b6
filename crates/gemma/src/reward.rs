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

use crate::blocks;
use crate::{Constrain, Error, Gemma, Result, Tokens};

impl Gemma<'_> {
    /// Rewards `[B]` (f32), one per row of `t`: the model must have a
    /// score head ([`crate::GemmaConfig::score_head`]).
    pub fn score(&self, b: &mut Builder, t: &Tokens, c: &dyn Constrain) -> Result<Value> {
        let h = self.final_hidden(b, t, c)?;
        let pick = b.scope("score", |b| last_real_token(b, t.segment_ids))?;
        self.score_at(b, h, pick)
    }

    /// Rewards of preference pairs laid out one per row, the chosen
    /// sequence as segment 1 and the rejected one as segment 2: `(chosen
    /// [B], rejected [B])`, each pooled at its segment's last token.
    pub fn score_pairs(
        &self,
        b: &mut Builder,
        t: &Tokens,
        c: &dyn Constrain,
    ) -> Result<(Value, Value)> {
        let h = self.final_hidden(b, t, c)?;
        let seg = t.segment_ids;
        let chosen = b.scope("score", |b| last_of_segment(b, seg, 1.0))?;
        let rejected = b.scope("score", |b| last_of_segment(b, seg, 2.0))?;
        Ok((self.score_at(b, h, chosen)?, self.score_at(b, h, rejected)?))
    }

    /// The final-normed hidden state `[B, T, d]` in f32.
    fn final_hidden(&self, b: &mut Builder, t: &Tokens, c: &dyn Constrain) -> Result<Value> {
        if !self.cfg.score_head {
            return Err(Error::config(
                "score_head",
                false,
                "a reward model (score_head = true, GemmaForSequenceClassification) to score rows",
            ));
        }
        let h = self.backbone(b, t, c)?;
        let (eps, norm) = (self.cfg.norm_eps, self.weights.final_norm);
        Ok(b.scope("score", |b| -> hlo::Result<Value> {
            let h = b.scope("model.norm", |b| blocks::rms_norm(b, h, norm, eps))?;
            b.convert(h, DType::F32)
        })?)
    }

    /// The score head on the states `h [B, T, d]` where `pick [B, T]` (one-hot per row) is 1.
    fn score_at(&self, b: &mut Builder, h: Value, pick: Value) -> Result<Value> {
        // invariant: `final_hidden` checked the config has a score head,
        // and `Weights::bind` binds it for such a config.
        let w = self.weights.score.expect("score head checked");
        Ok(b.scope("score", |b| -> hlo::Result<Value> {
            let [bs, tl, d] = [b.dims(h)[0], b.dims(h)[1], b.dims(h)[2]];
            let pick = b.broadcast_in_dim(pick, &[bs, tl, d], &[0, 1])?;
            let picked = b.mul(h, pick)?;
            let pooled = b.sum(picked, &[1])?; // [B, d]
            let r = b.linear(pooled, w)?; // [B, 1]
            b.reshape(r, &[bs])
        })?)
    }
}

/// `[B, T]` f32: 1 at the last token of segment `k` in each row (where the
/// next token is in another segment, or the row ends).
fn last_of_segment(b: &mut Builder, segment_ids: Value, k: f64) -> hlo::Result<Value> {
    let [bs, tl] = [b.dims(segment_ids)[0], b.dims(segment_ids)[1]];
    let seg = b.convert(segment_ids, DType::F32)?;
    let kk = b.full_like(seg, k);
    let inside = b.eq(seg, kk)?;
    let inside = b.convert(inside, DType::F32)?;
    let next = if tl > 1 {
        let tail = b.slice_axis(inside, 1, 1, tl - 1)?;
        let zero = b.constant(0.0, TensorType::f32([bs, 1]));
        b.concatenate(&[tail, zero], 1)?
    } else {
        b.constant(0.0, TensorType::f32([bs, tl]))
    };
    let ends = b.neg(next)?;
    let ends = b.add_scalar(ends, 1.0)?;
    b.mul(inside, ends)
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
