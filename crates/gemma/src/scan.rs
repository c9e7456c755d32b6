//! The decoder layers as one loop ([`crate::ComputeOptions::scan_layers`]):
//! the per-layer weights stacked `[layers, ...]` and one `scan` over them.

use hlo::{Builder, Value};

use crate::Result;
use crate::model::{Constrain, Gemma, MaskedAttention, attention_mask};
use crate::weights::{Layer, Layers};

impl Gemma<'_> {
    /// Each layer tensor stacked over the layers, `[layers, ...]` in
    /// [`crate::stacked_layer_specs`] order, sharded as `c` says: the
    /// stored ones ([`Layout::Stacked`]), or built the first time and reused (every micro-batch's forward shares them).
    pub(crate) fn stacked(&self, b: &mut Builder, c: &dyn Constrain) -> Result<Vec<Value>> {
        if let Some(s) = self.stacked.get() {
            return Ok(s.clone());
        }
        let specs = crate::stacked_layer_specs(self.cfg);
        let stacked = match &self.weights.layers {
            Layers::Stacked(stored) => b.scope("model.layers.stacked", |b| {
                specs
                    .iter()
                    .zip(stored.tensors())
                    .map(|(spec, w)| c.constrain_param(b, w, spec))
                    .collect::<hlo::Result<Vec<_>>>()
            })?,
            Layers::PerLayer(layers) => b.scope("model.layers.stack", |b| {
                let per: Vec<Vec<Value>> = layers.iter().map(Layer::tensors).collect();
                specs
                    .iter()
                    .enumerate()
                    .map(|(j, spec)| {
                        let parts = per
                            .iter()
                            .map(|t| {
                                let mut dims = vec![1];
                                dims.extend(b.dims(t[j]));
                                b.reshape(t[j], &dims)
                            })
                            .collect::<hlo::Result<Vec<_>>>()?;
                        let s = b.concatenate(&parts, 0)?;
                        c.constrain_param(b, s, spec)
                    })
                    .collect::<hlo::Result<Vec<_>>>()
            })?,
        };
        Ok(self.stacked.get_or_init(|| stacked).clone())
    }

    /// The decoder layers as one loop over the stacked weights, attending
    /// among the batch's own tokens under the causal mask of `segment_ids`.
    /// The loop body builds the mask from the integer segment ids: a scan's
    /// gradient accumulates a cotangent for every loop-invariant input, and
    /// a boolean mask has none.
    pub(crate) fn scanned_layers(
        &self,
        b: &mut Builder,
        x: Value,
        positions: Value,
        segment_ids: Value,
        c: &dyn Constrain,
    ) -> Result<Value> {
        let ws = self.stacked(b, c)?;
        let post = self.cfg.post_norms;
        let (fin, _) = b.scope("model.layers", |b| {
            b.scan(
                self.cfg.layers as i64,
                &[x],
                &ws,
                &[positions, segment_ids],
                |b, carry, w, k| {
                    let layer = Layer::from_tensors(w, post);
                    let mask = b.scope("attention_mask", |b| attention_mask(b, k[1]))?;
                    let mut attend = MaskedAttention(mask);
                    let y = b.remat(self.opts.remat, |b| {
                        self.decoder_layer(b, 0, &layer, carry[0], k[0], &mut attend)
                    })?;
                    let y = c.constrain(b, y, &["batch", "seq", "act_embed"])?;
                    Ok((vec![y], vec![]))
                },
            )
        })?;
        Ok(fin[0])
    }
}
