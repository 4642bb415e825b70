//! The cost of Tiramisu's steering per sampler step: CoPaint over an ADM-style `UNet2DModel`
//! run twice from the same noise, once plain and once with Tiramisu's x̂0 steering on every
//! step (VQ soft evidence, the circuit's forward and backward passes, S decoded samples, the
//! geometric mixture), and the steering call timed on its own. Random weights; the circuit is
//! the quad tree of Tiramisu's released circuits over the 16×16 grid of VQ patches with 1024
//! codes.
//!
//!   cargo bench -p latentflow-models --bench tiramisu [-- [small|full] [LATENTS] [STEPS]]
//!
//! `small` (the default): a 64×64 image, a 4-level ADM (64–256 channels, attention at 16×16 and
//! 8×8), an f4 VQ model. `full`: the authors' CelebA-HQ setting, a 256×256 image, RePaint's
//! ADM (256–1024 channels, attention at 32, 16 and 8) and an f16 VQ-GAN: about 550 M parameters
//! and 256×256 activations kept for the gradients, minutes per step on a small CPU.
//! LATENTS is the circuit's latents per region (default 64; the authors' circuits have 1024).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latentflow_models::tiramisu::{steer, Direct, Space, SteerConfig};
use latentflow_models::unet2d::{UNet2DConfig, UNet2DModel};
use latentflow_models::vq::{VqConfig, VqModel};
use latentflow_pc::structure::quad_tree;
use latentflow_pc::Circuit;
use latentflow_sampling::copaint::{copaint, CoPaintConfig, CoPaintRun, GradModel};
use latentflow_sampling::hooks::Replacement;
use latentflow_sampling::respace::{named_betas, space_timesteps, SpacedDiffusion};
use latentflow_sampling::{HookPoint, Noise, SampleError, StepContext, StepHook};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SMALL_ADM: &str = r#"{
  "sample_size": 64, "in_channels": 3, "out_channels": 6,
  "block_out_channels": [64, 128, 192, 256], "layers_per_block": 2,
  "down_block_types": ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"],
  "downsample_type": "resnet", "upsample_type": "resnet", "resnet_time_scale_shift": "scale_shift",
  "attention_head_dim": 64, "norm_num_groups": 32, "flip_sin_to_cos": true, "freq_shift": 0
}"#;

const FULL_ADM: &str = r#"{
  "sample_size": 256, "in_channels": 3, "out_channels": 6,
  "block_out_channels": [256, 256, 512, 512, 1024, 1024], "layers_per_block": 2,
  "down_block_types": ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"],
  "downsample_type": "resnet", "upsample_type": "resnet", "resnet_time_scale_shift": "scale_shift",
  "attention_head_dim": 64, "norm_num_groups": 32, "flip_sin_to_cos": true, "freq_shift": 0
}"#;

const SMALL_VQ: &str = r#"{
  "block_out_channels": [64, 128, 128], "layers_per_block": 1,
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "latent_channels": 3, "num_vq_embeddings": 1024, "norm_num_groups": 32
}"#;

const FULL_VQ: &str = r#"{
  "block_out_channels": [128, 128, 256, 256, 512], "layers_per_block": 2,
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "latent_channels": 256, "num_vq_embeddings": 1024, "norm_num_groups": 32
}"#;

/// Builds a model twice: once over a zero-initialised map to learn its parameters' names and
/// shapes, then over N(0, 0.02²) tensors of those shapes (plain tensors, so nothing records
/// gradients it does not need).
fn random<M>(build: impl Fn(VarBuilder) -> M) -> M {
    let dev = Device::Cpu;
    let map = VarMap::new();
    drop(build(VarBuilder::from_varmap(&map, DType::F32, &dev)));
    let tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .expect("var map")
        .iter()
        .map(|(name, var)| {
            let t = Tensor::randn(0f32, 0.02, var.shape(), &dev).expect("randn");
            (name.clone(), t)
        })
        .collect();
    build(VarBuilder::from_tensors(tensors, DType::F32, &dev))
}

fn config<C: serde::de::DeserializeOwned>(json: &str) -> C {
    serde_json::from_str(json).expect("bench config")
}

struct Adm(UNet2DModel);

fn model_err(e: latentflow_models::ModelError) -> SampleError {
    SampleError::Model(Box::new(e))
}

impl GradModel for Adm {
    fn output(&mut self, x: &Tensor, t: f64) -> Result<Tensor, SampleError> {
        self.0.forward(x, t, None).map_err(model_err)
    }
    fn vjp(&mut self, x: &Tensor, t: f64, cot: &Tensor) -> Result<Tensor, SampleError> {
        self.0.vjp(x, t, None, cot).map_err(model_err)
    }
}

/// Tiramisu's x̂0 steering on every step it sees, with the time it spent.
struct Steering<'a> {
    vq: &'a VqModel,
    pc: &'a Circuit,
    known: &'a Tensor,
    keep: &'a Tensor,
    cfg: SteerConfig,
    spent: f64,
    calls: usize,
}

impl StepHook for Steering<'_> {
    fn wants_x0(&self) -> bool {
        true
    }
    fn see(&mut self, at: HookPoint, ctx: &StepContext, x0: &Tensor) -> Replacement {
        if at != HookPoint::X0 {
            return Ok(None);
        }
        let (t, total) = ctx
            .position
            .unwrap_or((ctx.total - 1 - ctx.index, ctx.total));
        let variance = match ctx.variance {
            Some(v) => v.clone(),
            None => (x0.ones_like()? * 0.01)?,
        };
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(self.calls as u64);
        let parts = Direct {
            vq: self.vq,
            pc: self.pc,
        };
        let out = steer(
            x0,
            &variance,
            self.known,
            self.keep,
            &Space::Pixels,
            t as f64,
            total as f64,
            &parts,
            &self.cfg,
            &mut rng,
        )
        .map_err(model_err)?;
        self.spent += t0.elapsed().as_secs_f64();
        self.calls += 1;
        Ok(Some(out))
    }
}

/// One CoPaint run's inputs.
struct Inputs<'a> {
    diffusion: &'a SpacedDiffusion,
    known: &'a Tensor,
    keep: &'a Tensor,
    noise: &'a Tensor,
    steps: usize,
}

impl<'a> Inputs<'a> {
    /// The wall time of the run with `hooks`.
    fn time(&self, hooks: Vec<&'a mut dyn StepHook>, model: &mut Adm) -> f64 {
        let run = CoPaintRun {
            diffusion: self.diffusion,
            config: CoPaintConfig {
                steps: self.steps + 1,
                // A fixed number of model calls per step, so the runs differ by the steering.
                adaptive_lr: false,
                ..CoPaintConfig::default()
            },
            known: self.known.clone(),
            keep: self.keep.clone(),
            hooks,
            record: false,
        };
        let t0 = Instant::now();
        copaint(run, model, self.noise, &mut Noise::seeded(0)).expect("CoPaint");
        t0.elapsed().as_secs_f64()
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let full = args.iter().any(|a| a == "full");
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let latents = numbers.first().copied().unwrap_or(64);
    let steps = numbers.get(1).copied().unwrap_or(5);
    let (adm, vq, size) = if full {
        (FULL_ADM, FULL_VQ, 256)
    } else {
        (SMALL_ADM, SMALL_VQ, 64)
    };
    let dev = Device::Cpu;
    let src = Path::new("random");
    let t0 = Instant::now();
    let adm_config: UNet2DConfig = config(adm);
    let unet = random(|vb| UNet2DModel::new(adm_config.clone(), vb, src).expect("ADM"));
    let vq_config: VqConfig = config(vq);
    let vq = random(|vb| VqModel::new(vq_config.clone(), vb, src).expect("VQ"));
    let side = size / vq.downscale();
    let pc = quad_tree(side, side, 1024, latents, 0).expect("circuit");
    println!(
        "{} setting: {size}×{size} image, VQ grid {side}×{side}, circuit {} nodes / {} edges \
         ({latents} latents); built in {:.1} s",
        if full { "full" } else { "small" },
        pc.nodes().len(),
        pc.num_edges(),
        t0.elapsed().as_secs_f64()
    );

    let base = named_betas("linear", 1000).expect("betas");
    let spacing = (steps + 1).to_string();
    let diffusion =
        SpacedDiffusion::new(&base, &space_timesteps(1000, &spacing).expect("respacing"))
            .expect("diffusion");
    let noise = Tensor::randn(0f32, 1.0, (1, 3, size, size), &dev).expect("noise");
    let known = Tensor::randn(0f32, 0.3, (1, 3, size, size), &dev)
        .and_then(|t| t.clamp(-1f32, 1f32))
        .expect("image");
    let mut mask = vec![0f32; size * size];
    for y in 0..size {
        for x in 0..size / 2 {
            mask[y * size + x] = 1.0;
        }
    }
    let keep = Tensor::from_vec(mask, (1, 1, size, size), &dev).expect("mask");
    let mut model = Adm(unet);
    let inputs = Inputs {
        diffusion: &diffusion,
        known: &known,
        keep: &keep,
        noise: &noise,
        steps,
    };
    let t0 = Instant::now();
    let out = model.output(&noise, 999.0).expect("forward");
    let t1 = Instant::now();
    model.vjp(&noise, 999.0, &out).expect("vjp");
    println!(
        "ADM forward {:.2} s, vector-Jacobian product {:.2} s",
        (t1 - t0).as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    let plain = inputs.time(Vec::new(), &mut model);
    let mut steering = Steering {
        vq: &vq,
        pc: &pc,
        known: &known,
        keep: &keep,
        cfg: SteerConfig::default(),
        spent: 0.0,
        calls: 0,
    };
    let steered = inputs.time(vec![&mut steering], &mut model);
    let per = |s: f64| s / steps as f64;
    println!(
        "CoPaint step {:.2} s; with steering {:.2} s: overhead {:.2} s per step ({:.0} %), \
         of which the steering call {:.2} s ({} calls, {steps} steps)",
        per(plain),
        per(steered),
        per(steered - plain),
        100.0 * (steered - plain) / plain,
        steering.spent / steering.calls.max(1) as f64,
        steering.calls,
    );
}
