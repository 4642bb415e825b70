//! The temporal low-pass filter: against a direct complex DFT, and its invariants.

use candle_core::{DType, Device, Tensor};
use latentflow_sampling::temporal::{low_pass, response, TemporalFilter};

/// Re IDFT(H · DFT(x)) along the frames of one series, by complex sums.
fn direct(x: &[f64], h: &[f64]) -> Vec<f64> {
    let n = x.len();
    let tau = 2.0 * std::f64::consts::PI;
    let spectrum: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            x.iter().enumerate().fold((0.0, 0.0), |(re, im), (j, &v)| {
                let a = -tau * (k * j) as f64 / n as f64;
                (re + v * a.cos(), im + v * a.sin())
            })
        })
        .collect();
    (0..n)
        .map(|j| {
            spectrum
                .iter()
                .enumerate()
                .fold(0.0, |acc, (k, &(re, im))| {
                    let a = tau * (k * j) as f64 / n as f64;
                    acc + h[k] * (re * a.cos() - im * a.sin())
                })
                / n as f64
        })
        .collect()
}

fn series(frames: usize, seed: u64) -> Vec<f64> {
    (0..frames)
        .map(|i| ((i as u64 * 7919 + seed * 104729) % 1000) as f64 / 500.0 - 1.0)
        .collect()
}

#[test]
fn equals_the_direct_transform() {
    let dev = Device::Cpu;
    for (frames, kind, cutoff) in [
        (8, TemporalFilter::Butterworth { order: 4.0 }, 0.25),
        (7, TemporalFilter::Gaussian, 0.3),
        (16, TemporalFilter::Butterworth { order: 1.0 }, 0.5),
    ] {
        // 1×2×F×1×3: two channels, three pixels, each its own series.
        let (c, w) = (2, 3);
        let mut data = vec![0f64; c * frames * w];
        let mut want = vec![0f64; c * frames * w];
        let h = response(frames, kind, cutoff).unwrap();
        for ch in 0..c {
            for px in 0..w {
                let s = series(frames, (ch * w + px) as u64);
                let y = direct(&s, &h);
                for f in 0..frames {
                    data[(ch * frames + f) * w + px] = s[f];
                    want[(ch * frames + f) * w + px] = y[f];
                }
            }
        }
        let x = Tensor::from_vec(data, (1, c, frames, 1, w), &dev).unwrap();
        let got = low_pass(&x, 2, kind, cutoff).unwrap();
        let got: Vec<f64> = got.flatten_all().unwrap().to_vec1().unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{frames} frames {kind:?}: {err}");
    }
}

#[test]
fn still_frames_pass_and_flicker_is_damped() {
    let dev = Device::Cpu;
    let frames = 8;
    // A still video (every frame alike) is unchanged: H(0) = 1.
    let still = Tensor::ones((1, 4, frames, 2, 2), DType::F32, &dev).unwrap();
    let y = low_pass(&still, 2, TemporalFilter::Gaussian, 0.2).unwrap();
    let d = (y - &still).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    // Frame-to-frame flicker (+1, −1, …) is the Nyquist bin: scaled by H(1).
    let flicker: Vec<f64> = (0..frames)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let x = Tensor::from_vec(flicker.clone(), (1, 1, frames, 1, 1), &dev).unwrap();
    let kind = TemporalFilter::Butterworth { order: 2.0 };
    let h1 = response(frames, kind, 0.25).unwrap()[frames / 2];
    let y: Vec<f64> = low_pass(&x, 2, kind, 0.25)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in y.iter().zip(&flicker) {
        assert!((a - h1 * b).abs() < 1e-12, "{a} vs {}", h1 * b);
    }
    assert!(h1 < 0.01, "{h1}");
    // The dtype is kept; bad cutoffs and orders are refused.
    assert_eq!(y.len(), frames);
    assert!(low_pass(&x, 2, kind, 0.0).is_err());
    assert!(low_pass(&x, 2, TemporalFilter::Butterworth { order: -1.0 }, 0.3).is_err());
    assert!(TemporalFilter::parse("box", 4.0).is_err());
}
