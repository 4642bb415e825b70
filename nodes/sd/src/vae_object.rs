//! The VAE as a `Vae` object, with the pipeline conventions (scaling factor, [-1, 1] ↔ [0, 1],
//! NCHW ↔ NHWC): `decode(latent, tile)` → image, `encode(image)` → latent,
//! `empty_latent(width, height, batch)`.

use std::sync::Arc;

use latentflow_models::sd::vae::Vae;
use latentflow_plugin_api::sdk::candle::from_candle;
use latentflow_plugin_api::sdk::prelude::*;

use crate::convert::{arg, f32_tensor, fail, int_arg};

/// The VAE as an object: `decode(latent, tile)` → image, `encode(image)` → latent,
/// `empty_latent(width, height, batch)`, with the pipeline conventions (scaling factor,
/// [-1, 1] ↔ [0, 1], NCHW ↔ NHWC).
pub struct VaeObject {
    vae: Arc<Vae>,
    name: String,
}

impl VaeObject {
    /// Wraps a loaded VAE.
    pub fn new(vae: Arc<Vae>, name: String) -> Self {
        Self { vae, name }
    }

    fn decode(&self, latent: &Tensor, tile: usize) -> Result<Tensor, NodeError> {
        // SD3's and Flux's VAEs also shift: z / scale + shift.
        let shift = self.vae.config.shift_factor.unwrap_or(0.0);
        let z = (f32_tensor(latent)? / self.vae.config.scaling_factor)
            .and_then(|z| if shift != 0.0 { z + shift } else { Ok(z) })
            .map_err(fail)?;
        let img = self.vae.decode_tiled(&z, tile).map_err(fail)?;
        let img = ((img / 2.0).and_then(|t| t + 0.5))
            .and_then(|t| t.clamp(0f32, 1f32))
            .and_then(|t| t.permute((0, 2, 3, 1)))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        from_candle(&img)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor, NodeError> {
        let x = f32_tensor(image)?
            .permute((0, 3, 1, 2))
            .and_then(|t| t.affine(2.0, -1.0))
            .and_then(|t| t.contiguous())
            .map_err(fail)?;
        let mean = self.vae.encode_mean_raw(&x).map_err(fail)?;
        let shift = self.vae.config.shift_factor.unwrap_or(0.0);
        let z = if shift != 0.0 {
            (mean - shift).and_then(|m| m * self.vae.config.scaling_factor)
        } else {
            mean * self.vae.config.scaling_factor
        };
        from_candle(&z.map_err(fail)?)
    }

    fn empty_latent(
        &self,
        ctx: &Ctx,
        width: i64,
        height: i64,
        batch: i64,
    ) -> Result<Tensor, NodeError> {
        let f = self.vae.downscale() as i64;
        if width <= 0 || height <= 0 || width % f != 0 || height % f != 0 {
            return Err(NodeError::invalid(format!(
                "width {width} and height {height} must be positive multiples of {f} (the VAE's downscale factor)"
            )));
        }
        let c = self.vae.config.latent_channels;
        let shape = [
            batch.max(1) as usize,
            c,
            (height / f) as usize,
            (width / f) as usize,
        ];
        ctx.check_alloc("an empty latent of shape", &shape, 4)?;
        // Decoding it later takes the image's size too: refuse what could never be decoded.
        let image = [shape[0], 3, height as usize, width as usize];
        ctx.check_alloc("the image this latent decodes to", &image, 4)?;
        Ok(Tensor::from_vec(
            vec![0f32; shape.iter().product()],
            &shape,
        )?)
    }
}

impl ObjectImpl for VaeObject {
    fn interface(&self) -> String {
        "Vae".into()
    }
    fn call(&self, host: HostRef<'_>, method: &str, args: Vec<Value>) -> Reply {
        let tensor = |i| {
            arg(&args, i, method)?
                .as_tensor()
                .ok_or_else(|| NodeError::invalid(format!("Vae.{method} takes a tensor")))
        };
        match method {
            "decode" => {
                let tile = args.get(1).and_then(Value::as_int).unwrap_or(0).max(0) as usize;
                Ok(vec![Value::Tensor(self.decode(tensor(0)?, tile)?)])
            }
            "encode" => Ok(vec![Value::Tensor(self.encode(tensor(0)?)?)]),
            "empty_latent" => Ok(vec![Value::Tensor(self.empty_latent(
                &Ctx::new(host),
                int_arg(&args, 0, method)?,
                int_arg(&args, 1, method)?,
                int_arg(&args, 2, method)?,
            )?)]),
            other => Err(NodeError::invalid(format!("Vae has no method `{other}`"))),
        }
    }
    fn describe(&self) -> String {
        format!("Vae({})", self.name)
    }
}
