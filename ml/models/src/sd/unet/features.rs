//! Multi-scale UNet features for dense prediction heads (VPD's taps), taken through the up
//! path's hook: for level 0 (finest) the last up block's output; for coarser levels the up
//! block's state after its second layer (or its last, when it has fewer), before the upsampler.

use std::sync::Mutex;

use candle_core::Tensor;

use super::forward::{Cond, Extras, UNet};
use crate::Result;

impl UNet {
    /// The features, finest first.
    pub fn features(&self, x: &Tensor, t: f64, ctx: &Tensor) -> Result<Vec<Tensor>> {
        self.features_with(x, t, ctx, false)
    }

    /// [`UNet::features`], and with `attention` the cross-attention maps of the down and up
    /// blocks appended to the coarser levels (VPD): per level, the probabilities of every layer
    /// whose map has that level's size, averaged over layers and heads (B×tokens×h×w),
    /// concatenated to the level's channels. The finest level gets none.
    pub fn features_with(
        &self,
        x: &Tensor,
        t: f64,
        ctx: &Tensor,
        attention: bool,
    ) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        let maps: Mutex<Vec<Tensor>> = Default::default();
        let states: Mutex<Vec<(usize, usize, Tensor)>> = Default::default();
        let on_attention = |name: &str, probs: &Tensor| {
            if !name.starts_with("mid_block") {
                if let Ok(avg) = probs.mean(1) {
                    maps.lock().unwrap_or_else(|e| e.into_inner()).push(avg);
                }
            }
        };
        let on_up = |u: usize, j: usize, h: &Tensor| {
            states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((u, j, h.clone()));
        };
        let extras = Extras {
            attention: if attention { Some(&on_attention) } else { None },
            up_layer: Some(&on_up),
            ..Extras::default()
        };
        let b = x.dim(0)?;
        let temb = self.time_embedding(t, b, None, x.device())?;
        let h = self.conv_in(x)?;
        let c = Cond::new(&temb, ctx, &extras);
        let (h, mut skips) = self.down_path(&h, &c, None)?;
        let h = self.mid_block(&h, &c)?;
        let (finest, _) = self.up_path(&h, &mut skips, &c, (0, 0), None)?;
        let states = states.into_inner().unwrap_or_else(|e| e.into_inner());
        let n = self.up().len();
        let mut feats: Vec<Tensor> = self
            .up()
            .iter()
            .enumerate()
            .take(n.saturating_sub(1))
            .filter_map(|(u, block)| {
                let tap = block.layers.len().min(2).checked_sub(1)?;
                states
                    .iter()
                    .find(|(su, sj, _)| *su == u && *sj == tap)
                    .map(|(_, _, t)| t.clone())
            })
            .collect();
        feats.push(finest);
        feats.reverse();
        if attention {
            let maps = maps.into_inner().unwrap_or_else(|e| e.into_inner());
            for f in feats.iter_mut().skip(1) {
                let (fh, fw) = (f.dim(2)?, f.dim(3)?);
                // B×queries×tokens maps of this level's size.
                let same: Vec<&Tensor> = maps
                    .iter()
                    .filter(|m| m.dim(1).ok() == Some(fh * fw))
                    .collect();
                if same.is_empty() {
                    continue;
                }
                let mean = (Tensor::stack(&same, 0)?.sum(0)? / same.len() as f64)?;
                let tokens = mean.dim(2)?;
                let mean = mean.transpose(1, 2)?.reshape((b, tokens, fh, fw))?;
                *f = Tensor::cat(&[&*f, &mean], 1)?;
            }
        }
        Ok(feats)
    }
}
