//! Temporal smoothing of video latents: Cinemo's DCTInit, FreeInit's noise re-initialisation
//! and a temporal low-pass filter (glue over `latentflow_sampling::{dct, free_init, temporal}`).

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use latentflow_plugin_api::sdk::candle::{from_candle, to_candle};
use latentflow_plugin_api::sdk::prelude::*;
use latentflow_plugin_api::sdk::video::video_latent_shape;
use latentflow_sampling::free_noise::{free_noise, FreeNoiseKind};
use latentflow_sampling::schedulers::NoiseTable;
use latentflow_sampling::{dct, free_init, temporal, SampleError};
use rand::seq::SliceRandom;

use crate::fail;

fn sample_error(e: SampleError) -> NodeError {
    match e {
        SampleError::Invalid(m) => NodeError::invalid(m),
        other => fail(other),
    }
}

/// ᾱ at timestep `param` of the training schedule the node's parameters describe.
fn alpha_bar(p: &Params, param: &str) -> Result<f64, NodeError> {
    let steps = p.usize("train_steps")?;
    let table = NoiseTable::from_config(
        p.str("beta_schedule")?,
        p.f64("beta_start")?,
        p.f64("beta_end")?,
        steps,
    )
    .map_err(NodeError::invalid)?;
    let t = p.usize(param)?;
    if t >= steps {
        return Err(NodeError::invalid(format!(
            "`{param}` {t} is past the {steps} training timesteps"
        )));
    }
    Ok(table.alpha_bar(t as i64))
}

/// The training-schedule parameters, with the model family's defaults.
fn schedule_params(d: NodeDef, start: f64, end: f64, kind: &str) -> NodeDef {
    d.param(
        Param::choice("beta_schedule", &["linear", "scaled_linear"])
            .default(kind)
            .doc("the training schedule of the model the latents are for"),
    )
    .param(Param::float("beta_start").default(start).range(1e-8, 1.0))
    .param(Param::float("beta_end").default(end).range(1e-8, 1.0))
    .param(Param::int("train_steps").default(1000).range(1.0, 100000.0))
}

fn video_in(inputs: &Inputs, name: &str) -> Result<(CTensor, [usize; 5]), NodeError> {
    let t = inputs.tensor(name)?;
    let shape = video_latent_shape(name, t)?;
    Ok((to_candle(t, &Device::Cpu)?, shape))
}

fn out(t: &CTensor) -> Result<Vec<Value>, NodeError> {
    let t = t.to_dtype(CDType::F32).map_err(fail)?;
    Ok(vec![Value::Tensor(from_candle(&t)?)])
}

fn dct_init(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (noise, [b, c, _, h, w]) = video_in(inputs, "noise")?;
    let image = to_candle(inputs.tensor("image_latent")?, &Device::Cpu)?;
    let image = match image.dims() {
        [1, ic, ih, iw] if b > 1 && [*ic, *ih, *iw] == [c, h, w] => {
            image.broadcast_as((b, c, h, w)).map_err(fail)?
        }
        _ => image,
    };
    let ab = alpha_bar(p, "noise_timestep")?;
    let z = dct::dct_init(&image, &noise, ab, p.f64("cutoff")?).map_err(sample_error)?;
    out(&z)
}

fn free_init_mix(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (z0, s0) = video_in(inputs, "latent")?;
    let (initial, s1) = video_in(inputs, "initial_noise")?;
    let (fresh, s2) = video_in(inputs, "fresh_noise")?;
    if s1 != s2 || s1 != s0 {
        return Err(NodeError::invalid(format!(
            "the latent and both noises must have one shape: {s0:?}, {s1:?} and {s2:?}"
        )));
    }
    let settings = free_init::FreeInit {
        iterations: 2,
        kind: free_init::FilterKind::parse(p.str("filter")?, p.f64("order")?)
            .map_err(sample_error)?,
        d_s: p.f64("d_s")?,
        d_t: p.f64("d_t")?,
        fast: false,
    };
    // z_T = √ᾱ·z0 + √(1−ᾱ)·ε_init (diffusers' add_noise), then the frequency mix.
    let ab = alpha_bar(p, "diffuse_timestep")?;
    out(&settings
        .reinit(&z0, &initial, &fresh, ab)
        .map_err(sample_error)?)
}

fn free_noise_node(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (noise, _) = video_in(inputs, "noise")?;
    let kind = match p.str("mode")? {
        "repeat_context" => FreeNoiseKind::RepeatContext,
        _ => FreeNoiseKind::ShuffleContext,
    };
    let mut rng = Ctx::rng_from(p.seed("seed")?);
    let mut shuffle = |n: usize| {
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut rng);
        v
    };
    let out_t = free_noise(
        &noise,
        kind,
        p.usize("context_length")?,
        p.usize("context_stride")?,
        &mut shuffle,
    )
    .map_err(sample_error)?;
    out(&out_t)
}

fn latent_mix(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (a, sa) = video_in(inputs, "a")?;
    let (b, sb) = video_in(inputs, "b")?;
    if sa != sb {
        return Err(NodeError::invalid(format!(
            "the two video latents must have one shape: {sa:?} and {sb:?}"
        )));
    }
    let r = p.f64("ratio")?;
    out(&((a * r).and_then(|a| a + (b * (1.0 - r))?)).map_err(fail)?)
}

fn temporal_lowpass(_: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let (x, _) = video_in(inputs, "video_latent")?;
    let kind =
        temporal::TemporalFilter::parse(p.str("filter")?, p.f64("order")?).map_err(sample_error)?;
    out(&temporal::low_pass(&x, 2, kind, p.f64("cutoff")?).map_err(sample_error)?)
}

pub fn nodes() -> Vec<NodeDef> {
    let v = || PortType::video_latent(Dim::var("C"));
    vec![
        schedule_params(
            NodeDef::new("video.dct_init", dct_init)
                .doc("Cinemo's DCTInit: the image latent repeated over the noise's frames and noised to `noise_timestep`, mixed with the noise in 3-D DCT space: the low spatial frequencies (below ⌊H·cutoff⌋ × ⌊W·cutoff⌋, at every temporal frequency) from the noised image, the rest from the noise. Defaults: Cinemo's (t = 975, cutoff 0.23, linear betas 1e-4…0.02).")
                .input("image_latent", PortType::latent(Dim::var("C")), "1×C×H×W or N×C×H×W: the first frame's latent")
                .input("noise", v(), "N×C×F×H×W initial noise")
                .output("latent", v(), "z_T, N×C×F×H×W")
                .param(Param::int("noise_timestep").default(975).min(0.0).doc("τ: the image is noised to ᾱ_τ"))
                .param(Param::float("cutoff").default(0.23).range(0.0, 1.0).doc("the low-pass fraction of each spatial axis")),
            0.0001,
            0.02,
            "linear",
        ),
        schedule_params(
            NodeDef::new("video.free_init_mix", free_init_mix)
                .doc("FreeInit's re-initialisation (diffusers' FreeInitMixin): the last pass's result re-noised to `diffuse_timestep` with the first pass's noise, its low spatio-temporal frequencies kept and the high ones taken from fresh noise. Defaults: diffusers' (Butterworth of order 4, d_s = d_t = 0.25, t = 999, AnimateDiff's linear betas 0.00085…0.012).")
                .input("latent", v(), "z0 of the previous pass, N×C×F×H×W")
                .input("initial_noise", v(), "the first pass's initial noise")
                .input("fresh_noise", v(), "new noise for the high frequencies")
                .output("latent", v(), "the next pass's initial latent")
                .param(Param::choice("filter", &["butterworth", "gaussian", "ideal", "box"]).default("butterworth"))
                .param(Param::float("order").default(4.0).range(0.0, 100.0).doc("Butterworth order"))
                .param(Param::float("d_s").default(0.25).range(0.0, 1.0).doc("spatial stop frequency"))
                .param(Param::float("d_t").default(0.25).range(0.0, 1.0).doc("temporal stop frequency"))
                .param(Param::int("diffuse_timestep").default(999).min(0.0)),
            0.00085,
            0.012,
            "linear",
        ),
        NodeDef::new("video.free_noise", free_noise_node)
            .doc("FreeNoise's initial noise for videos longer than the motion modules' window (diffusers' _prepare_latents_free_noise): shuffle_context gives the frames past the first context window shuffled copies of the window before (stride by stride), so every window sees noise like the first; repeat_context repeats the first window. Feed it to samplers.sample_video's noise input, with the same context_length and context_stride set on sd.animatediff (FreeNoise's windowed temporal attention).")
            .input("noise", v(), "N×C×F×H×W noise")
            .output("noise", v(), "the rearranged noise")
            .param(Param::choice("mode", &["shuffle_context", "repeat_context"]).default("shuffle_context"))
            .param(Param::int("context_length").default(16).range(1.0, 4096.0).doc("frames per window (the motion modules': 16)"))
            .param(Param::int("context_stride").default(4).range(1.0, 4096.0))
            .param(Param::seed("seed").doc("the shuffles' seed")),
        NodeDef::new("video.latent_mix", latent_mix)
            .doc("ratio·a + (1 − ratio)·b: BIVDiff's latent mix of the image model's inversion (a) and the video model's (b). Its ratios: 1 for ControlNet and InstructPix2Pix, 0.25 for Prompt2Prompt, 0.1 for SD inpainting.")
            .input("a", v(), "N×C×F×H×W (BIVDiff: the image model's inversion)")
            .input("b", v(), "the same shape (BIVDiff: the video model's inversion)")
            .output("latent", v(), "the mix")
            .param(Param::float("ratio").default(1.0).range(0.0, 1.0).doc("the weight of a")),
        NodeDef::new("video.temporal_lowpass", temporal_lowpass)
            .doc("Smooths a video latent along its frames: Re IFFT(H(f)·FFT(x)) per channel and pixel, H a Butterworth or Gaussian response in normalised temporal frequency (1 = alternating frames). A still video passes unchanged.")
            .input("video_latent", v(), "N×C×F×H×W")
            .output("video_latent", v(), "smoothed")
            .param(Param::choice("filter", &["butterworth", "gaussian"]).default("butterworth"))
            .param(Param::float("cutoff").default(0.25).range(0.001, 100.0).doc("the stop frequency (1 = the Nyquist frequency of the frame rate)"))
            .param(Param::float("order").default(4.0).range(0.01, 100.0).doc("Butterworth order")),
    ]
}
