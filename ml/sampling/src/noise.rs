//! Where noise comes from: one ChaCha8 stream from a seed (standard normal, row-major), or a
//! recording of another implementation's draws replayed in order.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::SampleError;

/// A source of unit-normal noise tensors.
pub enum Noise {
    /// A seeded stream: the same seed gives the same noise on every machine.
    Seeded(Box<ChaCha8Rng>),
    /// Recorded draws, consumed in order.
    Recorded {
        /// All draws, concatenated.
        data: Vec<f32>,
        /// How many values were consumed.
        at: usize,
    },
}

impl Noise {
    /// A stream seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed)))
    }

    /// Replays `data`, which must hold whole draws of `per_draw` values.
    pub fn recorded(data: Vec<f32>, per_draw: usize) -> Result<Self, SampleError> {
        if data.is_empty() || per_draw == 0 || !data.len().is_multiple_of(per_draw) {
            return Err(SampleError::Invalid(format!(
                "the noise input has {} values, not a multiple of the latent's {per_draw}",
                data.len()
            )));
        }
        Ok(Noise::Recorded { data, at: 0 })
    }

    /// The next `n` values.
    pub fn values(&mut self, n: usize) -> Result<Vec<f32>, SampleError> {
        match self {
            Noise::Seeded(rng) => Ok((0..n)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect()),
            Noise::Recorded { data, at } => {
                let out = data.get(*at..*at + n).ok_or_else(|| {
                    SampleError::Invalid(format!(
                        "the noise input holds {} draws of {n} values; the sampler needs more",
                        data.len() / n.max(1)
                    ))
                })?;
                *at += n;
                Ok(out.to_vec())
            }
        }
    }

    /// The next draw, shaped `shape`.
    pub fn draw(&mut self, shape: &[usize], device: &Device) -> Result<Tensor, SampleError> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.values(n)?, shape, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_noise_is_consumed_in_order_and_runs_out_clearly() {
        let mut n = Noise::recorded(vec![1.0, 2.0, 3.0, 4.0], 2).unwrap();
        assert_eq!(n.values(2).unwrap(), vec![1.0, 2.0]);
        assert_eq!(n.values(2).unwrap(), vec![3.0, 4.0]);
        let e = n.values(2).unwrap_err();
        assert!(e.to_string().contains("needs more"), "{e}");
        assert!(Noise::recorded(vec![1.0; 3], 2).is_err());
    }

    #[test]
    fn a_seed_gives_the_same_stream() {
        let a = Noise::seeded(7).values(5).unwrap();
        let b = Noise::seeded(7).values(5).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Noise::seeded(8).values(5).unwrap());
    }
}
