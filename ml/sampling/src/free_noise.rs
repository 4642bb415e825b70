//! FreeNoise's noise for long videos (diffusers' `_prepare_latents_free_noise`): frames past
//! the first context window reuse the noise of the window before, shuffled, so that every
//! window of a long video sees noise like the first one's.
//!
//! `shuffle_context`: for i = L, L + s, … < F (L the context length, s the stride), the frames
//! [i, i + n) take a permutation of the frames [max(0, i − L), … + n), n = min(s, F − …),
//! in order, each window reading the frames as earlier windows left them. `repeat_context`: the
//! first L frames, repeated.

use candle_core::Tensor;

use crate::SampleError;

/// How FreeNoise fills the frames past the first window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeNoiseKind {
    /// Shuffled copies of the previous window's frames.
    ShuffleContext,
    /// The first window, repeated.
    RepeatContext,
}

/// `noise` (N×C×F×H×W) rearranged along its frames; `permutation(n)` gives a permutation of
/// 0..n for each shuffled window (diffusers draws them with `torch.randperm`).
pub fn free_noise(
    noise: &Tensor,
    kind: FreeNoiseKind,
    context_length: usize,
    stride: usize,
    permutation: &mut dyn FnMut(usize) -> Vec<usize>,
) -> Result<Tensor, SampleError> {
    let frames = match noise.dims() {
        [_, _, f, _, _] => *f,
        other => {
            return Err(SampleError::Invalid(format!(
                "FreeNoise takes video latents N×C×F×H×W, got {other:?}"
            )))
        }
    };
    if context_length == 0 || stride == 0 {
        return Err(SampleError::Invalid(
            "FreeNoise's context length and stride must be at least 1".into(),
        ));
    }
    let frame = |x: &Tensor, i: usize| x.narrow(2, i, 1);
    match kind {
        FreeNoiseKind::RepeatContext => {
            let l = context_length.min(frames);
            let picked: Vec<Tensor> = (0..frames)
                .map(|i| frame(noise, i % l))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::cat(&picked, 2)?)
        }
        FreeNoiseKind::ShuffleContext => {
            let mut cols: Vec<Tensor> = (0..frames)
                .map(|i| frame(noise, i))
                .collect::<candle_core::Result<_>>()?;
            let mut i = context_length;
            while i < frames {
                let start = i.saturating_sub(context_length);
                let end = (start + stride).min(frames);
                let len = end - start;
                if len == 0 {
                    break;
                }
                let perm = permutation(len);
                if perm.len() != len || (0..len).any(|k| !perm.contains(&k)) {
                    return Err(SampleError::Invalid(format!(
                        "not a permutation of 0..{len}: {perm:?}"
                    )));
                }
                let sources: Vec<Tensor> = perm.iter().map(|&k| cols[start + k].clone()).collect();
                let n = len.min(frames - i);
                for (k, src) in sources.into_iter().take(n).enumerate() {
                    cols[i + k] = src;
                }
                i += stride;
            }
            Ok(Tensor::cat(&cols, 2)?)
        }
    }
}
