//! Per-step hooks: code that sees, and may replace, the predicted clean sample x̂0 of each step
//! and the latent after it. The inpainting blend is one; guidance that steers x̂0 (TPM
//! inpainting) and noise re-initialisation (FreeInit) are others.

use candle_core::Tensor;

use crate::SampleError;

/// Where the sampler is, for a hook.
pub struct StepContext<'a> {
    /// This step's index within the run (0-based).
    pub index: usize,
    /// Steps in the run.
    pub total: usize,
    /// The timestep given to the model.
    pub timestep: f64,
    /// The coefficients (a, b) that noise a clean sample to the level the latent has after this
    /// step (a·x0 + b·noise); `None` after the last step.
    pub next_level: Option<(f64, f64)>,
    /// The unit noise the run started from.
    pub initial_noise: &'a Tensor,
    /// The variance of p(x_{t−1} | x_t) per element, the latent's shape, given to x̂0 hooks:
    /// learned-range models' own under CoPaint, DDPM's posterior variance in the plain loop;
    /// TPM steering uses it as the spread of x̂0.
    pub variance: Option<&'a Tensor>,
    /// The step's place in its process: the index of its timestep counting down (CoPaint: in
    /// the respaced process; the plain loop: steps left − 1) and the process's length.
    pub position: Option<(usize, usize)>,
}

/// The two points of a step where hooks are called: x̂0, the predicted clean sample (only for
/// hooks that [want it](StepHook::wants_x0); the step is then taken from a replacement), and
/// the latent after the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum HookPoint {
    X0,
    Latent,
}

/// What a hook answers: a replacement tensor, or none to leave it.
pub type Replacement = Result<Option<Tensor>, SampleError>;

/// A per-step hook.
pub trait StepHook {
    /// Whether it is called at [`HookPoint::X0`] (x̂0 is then computed each step).
    fn wants_x0(&self) -> bool {
        false
    }

    /// The tensor at `at` of this step; a returned tensor replaces it.
    fn see(&mut self, at: HookPoint, ctx: &StepContext, t: &Tensor) -> Replacement;
}

/// Inpainting by blending: after every step the known region is put back, noised to the
/// latent's new level (after the last step: the original itself), as diffusers'
/// `StableDiffusionInpaintPipeline` does for 4-channel models.
pub struct InpaintBlend {
    /// The original latent.
    pub known: Tensor,
    /// 1 where to repaint, 0 where to keep, the latent's shape.
    pub mask: Tensor,
}

impl InpaintBlend {
    /// A blend of `known` under `mask` (1 = repaint), both of the latent's shape.
    pub fn new(known: Tensor, mask: Tensor) -> Result<Self, SampleError> {
        if known.dims() == mask.dims() {
            return Ok(Self { known, mask });
        }
        let (m, k) = (mask.dims(), known.dims());
        Err(SampleError::Invalid(format!(
            "the inpainting mask {m:?} does not match the latent {k:?}"
        )))
    }
}

impl StepHook for InpaintBlend {
    fn see(&mut self, at: HookPoint, ctx: &StepContext, x: &Tensor) -> Replacement {
        if at != HookPoint::Latent {
            return Ok(None);
        }
        let known_now = match ctx.next_level {
            Some((a, b)) => crate::schedulers::ops::lincomb(a, &self.known, b, ctx.initial_noise)?,
            None => self.known.clone(),
        };
        let keep = self.mask.affine(-1.0, 1.0)?;
        Ok(Some(((x * &self.mask)? + (known_now * keep)?)?))
    }
}

/// A pixel-space mask (1×H×W or N×H×W, any resolution), binarized at 0.5 as diffusers' mask
/// processor does and sampled (nearest) to the latent's last two dimensions, then broadcast over
/// the latent's shape (channels, frames).
pub fn latent_mask(mask: &Tensor, latent_shape: &[usize]) -> Result<Tensor, SampleError> {
    let ms = mask.dims();
    let r = latent_shape.len();
    if r < 3 {
        return Err(SampleError::Invalid(format!(
            "a latent of shape {latent_shape:?} cannot take a mask"
        )));
    }
    let n = latent_shape[0];
    if ms.len() != 3 || (ms[0] != 1 && ms[0] != n) {
        return Err(SampleError::Invalid(format!(
            "mask must be 1×H×W or {n}×H×W, got {ms:?}"
        )));
    }
    let (h, w) = (latent_shape[r - 2], latent_shape[r - 1]);
    let (mb, mh, mw) = (ms[0], ms[1], ms[2]);
    let m = mask.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(mb * h * w);
    for b in 0..mb {
        for y in 0..h {
            for x in 0..w {
                let v = m[b * mh * mw + (y * mh / h) * mw + x * mw / w];
                out.push(if v >= 0.5 { 1f32 } else { 0f32 });
            }
        }
    }
    let mut shape = vec![1usize; r];
    shape[0] = mb;
    shape[r - 2] = h;
    shape[r - 1] = w;
    let small = Tensor::from_vec(out, shape, mask.device())?;
    Ok(small.broadcast_as(latent_shape)?.contiguous()?)
}
