//! diffusers' `VQModel` (VQ-GAN): an image encoder whose latents are snapped to the nearest of
//! a codebook's vectors, and the decoder back. Encoder and decoder are the AutoencoderKL's
//! blocks (`sd::vae`) with a single-width latent.
//!
//! Besides hard codes, [`VqModel::code_log_probs`] gives soft code probabilities as Tiramisu's
//! VQ-GAN does (`quantize_prob`): `log_softmax(−√(‖z − e_k‖² / d))` over the codebook.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};
use latentflow_weights::{checks, Checked, FieldError, Weights};
use serde::Deserialize;

use crate::sd::vae::{Decoder, Encoder, VaeConfig};
use crate::{ModelError, Result};

/// The fields of diffusers' `VQModel` config.
#[derive(Debug, Clone, Deserialize)]
pub struct VqConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Encoder block types (only `DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Channels per resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per block.
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Activation (only `silu`).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "three")]
    pub latent_channels: usize,
    /// Codebook size.
    #[serde(default = "codes")]
    pub num_vq_embeddings: usize,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Codebook vector width (absent: latent channels).
    #[serde(default)]
    pub vq_embed_dim: Option<usize>,
    /// Latent scaling factor.
    #[serde(default = "scale")]
    pub scaling_factor: f64,
    /// `group` (only; `spatial` is MoVQ's).
    #[serde(default = "group")]
    pub norm_type: String,
    /// Attention in the mid blocks (only `true`).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn codes() -> usize {
    256
}
fn groups() -> usize {
    32
}
fn scale() -> f64 {
    0.18215
}
fn silu() -> String {
    "silu".into()
}
fn group() -> String {
    "group".into()
}
fn yes() -> bool {
    true
}

impl VqConfig {
    /// The codebook vectors' width.
    pub fn embed_dim(&self) -> usize {
        self.vq_embed_dim.unwrap_or(self.latent_channels)
    }

    fn blocks(&self) -> VaeConfig {
        VaeConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            scaling_factor: self.scaling_factor,
            act_fn: self.act_fn.clone(),
            down_block_types: self.down_block_types.clone(),
            up_block_types: self.up_block_types.clone(),
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: self.mid_block_add_attention,
            shift_factor: None,
        }
    }
}

impl Checked for VqConfig {
    fn check(&self) -> std::result::Result<(), FieldError> {
        checks::one_of("norm_type", &self.norm_type, &["group"])?;
        checks::positive(&[
            ("num_vq_embeddings", self.num_vq_embeddings),
            ("vq_embed_dim", self.embed_dim()),
        ])?;
        self.blocks().check()
    }
}

/// A loaded VQModel (f32).
pub struct VqModel {
    /// The configuration.
    pub config: VqConfig,
    encoder: Encoder,
    codebook: Embedding,
    /// K×d codebook.
    codebook_vectors: Tensor,
    decoder: Decoder,
}

impl VqModel {
    /// Loads a diffusers `VQModel` folder (`config.json` and weights).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = VqConfig::from_file(&dir.join("config.json"))?;
        let vb = Weights::folder(dir)?.var_builder(DType::F32, &Device::Cpu)?;
        Self::new(config, vb, dir)
    }

    /// Builds the model from a checked config; `source` names the weights in messages.
    pub fn new(config: VqConfig, vb: VarBuilder, source: &Path) -> Result<Self> {
        let mismatch = |e| ModelError::mismatch(source.to_path_buf(), "VQ model", e);
        let blocks = config.blocks();
        let (l, d) = (config.latent_channels, config.embed_dim());
        let encoder = Encoder::with_outputs(&vb, &blocks, l, Some((l, d))).map_err(mismatch)?;
        let decoder = Decoder::with_inputs(&vb, &blocks, Some((d, l))).map_err(mismatch)?;
        let codebook = embedding(config.num_vq_embeddings, d, vb.pp("quantize.embedding"))
            .map_err(mismatch)?;
        let codebook_vectors = codebook.embeddings().clone();
        Ok(Self {
            config,
            encoder,
            codebook,
            codebook_vectors,
            decoder,
        })
    }

    /// Image pixels per latent pixel.
    pub fn downscale(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// The unquantised latent `N×d×h×w` of an image `N×C×H×W` in [-1, 1] (diffusers' `encode`).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let d = image.dims();
        if d.len() != 4 || d[1] != self.config.in_channels {
            return Err(ModelError::shape(
                "VQ input image",
                format!("N×{}×H×W", self.config.in_channels),
                d,
            ));
        }
        Ok(self.encoder.forward(image)?)
    }

    /// Squared distances `N·h·w × K` of every latent vector to every code, and the latent's
    /// shape.
    fn distances(&self, latent: &Tensor) -> Result<(Tensor, (usize, usize, usize))> {
        let (n, c, h, w) = latent.dims4()?;
        if c != self.config.embed_dim() {
            return Err(ModelError::shape(
                "VQ latent",
                format!("N×{}×h×w", self.config.embed_dim()),
                latent.dims(),
            ));
        }
        let z = latent.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
        let e = &self.codebook_vectors;
        let d = z
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_add(&e.sqr()?.sum(1)?.unsqueeze(0)?)?
            .sub(&(z.matmul(&e.t()?)? * 2.0)?)?;
        Ok((d, (n, h, w)))
    }

    /// The nearest code of every latent vector, `N×h×w`.
    pub fn codes(&self, latent: &Tensor) -> Result<Tensor> {
        let (d, (n, h, w)) = self.distances(latent)?;
        Ok(d.argmin(1)?.reshape((n, h, w))?)
    }

    /// Soft code probabilities, as log-probabilities `N×h×w×K`:
    /// `log_softmax(−√(‖z − e_k‖² / d))` (Tiramisu's `quantize_prob`).
    pub fn code_log_probs(&self, latent: &Tensor) -> Result<Tensor> {
        let (d, (n, h, w)) = self.distances(latent)?;
        let dim = self.config.embed_dim() as f64;
        let logits = (d / dim)?.clamp(0.0, f64::INFINITY)?.sqrt()?.neg()?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        Ok(lp.reshape((n, h, w, self.config.num_vq_embeddings))?)
    }

    /// The image of codes `N×h×w` (u32).
    pub fn decode_codes(&self, codes: &Tensor) -> Result<Tensor> {
        let (n, h, w) = codes.dims3()?;
        let k = self.config.num_vq_embeddings as u32;
        let max = codes
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?;
        if max >= k {
            return Err(ModelError::invalid(format!(
                "code {max} of a {k}-entry codebook"
            )));
        }
        let q = self
            .codebook
            .forward(&codes.to_dtype(DType::U32)?.flatten_all()?)?
            .reshape((n, h, w, self.config.embed_dim()))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        Ok(self.decoder.forward(&q)?)
    }

    /// diffusers' `decode`: the latent quantised to its nearest codes, then decoded.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.decode_codes(&self.codes(latent)?)
    }
}
