//! AutoencoderKL from a diffusers `vae/` folder: `config.json` + `.safetensors` weights.
//!
//! Every architecture parameter comes from `config.json`; configurations this implementation
//! does not support are refused with the name of the field.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::Deserialize;

/// Why a VAE could not be loaded or run.
#[derive(Debug)]
pub struct VaeError(pub String);

impl std::fmt::Display for VaeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VaeError {}

fn err(e: impl std::fmt::Display) -> VaeError {
    VaeError(e.to_string())
}

/// The fields of diffusers' `AutoencoderKL` config that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Channels per resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per block.
    pub layers_per_block: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Latent scaling factor of the pipeline.
    pub scaling_factor: f64,
    /// Activation (only `silu`).
    #[serde(default = "silu")]
    pub act_fn: String,
    /// Encoder block types (only `DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Whether `quant_conv` exists.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Attention in the mid block (only `true`).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// SD3/Flux latent shift (only none).
    #[serde(default)]
    pub shift_factor: Option<f64>,
}

fn silu() -> String {
    "silu".into()
}

fn yes() -> bool {
    true
}

impl VaeConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, VaeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let cfg: VaeConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
        cfg.check().map_err(|field| {
            err(format!(
                "{}: unsupported VAE configuration: {field}",
                path.display()
            ))
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.act_fn != "silu" {
            return Err(format!("act_fn = {:?} (only \"silu\")", self.act_fn));
        }
        if let Some(b) = self
            .down_block_types
            .iter()
            .find(|b| *b != "DownEncoderBlock2D")
        {
            return Err(format!(
                "down_block_types contains {b:?} (only DownEncoderBlock2D)"
            ));
        }
        if let Some(b) = self
            .up_block_types
            .iter()
            .find(|b| *b != "UpDecoderBlock2D")
        {
            return Err(format!(
                "up_block_types contains {b:?} (only UpDecoderBlock2D)"
            ));
        }
        if self.down_block_types.len() != self.block_out_channels.len()
            || self.up_block_types.len() != self.block_out_channels.len()
        {
            return Err("block_out_channels and the block type lists differ in length".into());
        }
        if !self.mid_block_add_attention {
            return Err("mid_block_add_attention = false".into());
        }
        if self.shift_factor.is_some() {
            return Err("shift_factor (SD3/Flux VAEs are not supported yet)".into());
        }
        if self
            .block_out_channels
            .iter()
            .any(|c| c % self.norm_num_groups != 0)
        {
            return Err("norm_num_groups must divide every block_out_channels".into());
        }
        Ok(())
    }
}

/// The encoder half up to the posterior mean (candle-transformers keeps the mean private).
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Encoder {
    fn new(vb: &VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let enc = vb.pp("encoder");
        let chans = &c.block_out_channels;
        let conv_in = candle_nn::conv2d(c.in_channels, chans[0], 3, pad1, enc.pp("conv_in"))?;
        let mut down = Vec::with_capacity(chans.len());
        for (i, &out) in chans.iter().enumerate() {
            let cfg = DownEncoderBlock2DConfig {
                num_layers: c.layers_per_block,
                resnet_eps: 1e-6,
                resnet_groups: c.norm_num_groups,
                output_scale_factor: 1.0,
                add_downsample: i + 1 < chans.len(),
                downsample_padding: 0,
            };
            let inp = if i == 0 { chans[0] } else { chans[i - 1] };
            down.push(DownEncoderBlock2D::new(
                enc.pp("down_blocks").pp(i.to_string()),
                inp,
                out,
                cfg,
            )?);
        }
        let last = chans[chans.len() - 1];
        let mid_cfg = UNetMidBlock2DConfig {
            num_layers: 1,
            resnet_eps: 1e-6,
            resnet_groups: Some(c.norm_num_groups),
            attn_num_head_channels: None,
            output_scale_factor: 1.0,
        };
        let mid = UNetMidBlock2D::new(enc.pp("mid_block"), last, None, mid_cfg)?;
        let norm = candle_nn::group_norm(c.norm_num_groups, last, 1e-6, enc.pp("conv_norm_out"))?;
        let conv_out = candle_nn::conv2d(last, 2 * c.latent_channels, 3, pad1, enc.pp("conv_out"))?;
        let quant_conv = if c.use_quant_conv {
            let m = 2 * c.latent_channels;
            Some(candle_nn::conv2d(
                m,
                m,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Encoder {
            conv_in,
            down,
            mid,
            norm,
            conv_out,
            quant_conv,
            latent_channels: c.latent_channels,
        })
    }

    /// The posterior mean: the first half of the encoder's moments.
    fn mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(image)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.norm.forward(&xs)?)?;
        let mut moments = self.conv_out.forward(&xs)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)
    }
}

/// A loaded AutoencoderKL (f32 on the CPU).
pub struct Vae {
    /// The configuration.
    pub config: VaeConfig,
    model: AutoEncoderKL,
    encoder: Encoder,
    /// The folder it came from.
    pub source: PathBuf,
}

fn weights_file(dir: &Path) -> Result<PathBuf, VaeError> {
    for name in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(err(format!(
        "{} has no diffusion_pytorch_model.safetensors",
        dir.display()
    )))
}

impl Vae {
    /// Loads a diffusers `vae/` folder. Weights are memory-mapped and converted to f32.
    pub fn load(dir: &Path) -> Result<Self, VaeError> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let weights = weights_file(dir)?;
        // SAFETY: the file is mapped read-only; modifying it while loaded is not supported.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
                .map_err(err)?;
        let cfg = AutoEncoderKLConfig {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            latent_channels: config.latent_channels,
            norm_num_groups: config.norm_num_groups,
            use_quant_conv: config.use_quant_conv,
            use_post_quant_conv: config.use_post_quant_conv,
        };
        let mismatch = |e: candle_core::Error| {
            err(format!(
                "{}: weights do not match config.json: {e}",
                dir.display()
            ))
        };
        let encoder = Encoder::new(&vb, &config).map_err(mismatch)?;
        let model = AutoEncoderKL::new(vb, config.in_channels, config.out_channels, cfg)
            .map_err(mismatch)?;
        Ok(Vae {
            config,
            model,
            encoder,
            source: dir.to_path_buf(),
        })
    }

    /// Decoder output for a raw latent `N×C×h×w` (no scaling factor), image in about [-1, 1].
    pub fn decode_raw(&self, latent: &Tensor) -> Result<Tensor, VaeError> {
        self.model.decode(latent).map_err(err)
    }

    /// Posterior mean of an image `N×3×H×W` in [-1, 1] (no scaling factor).
    pub fn encode_mean_raw(&self, image: &Tensor) -> Result<Tensor, VaeError> {
        self.encoder.mean(image).map_err(err)
    }
}
