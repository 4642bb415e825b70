//! The 3-D DCT and Cinemo's DCTInit against the authors' code (tools/reference/make_dct_fixtures.py:
//! their `dct_low_pass_filter` and `exchanged_mixed_dct_freq` over torch-dct, checked there
//! against scipy), and the invariants of the mix.

use candle_core::{DType, Device, Tensor};
use latentflow_sampling::dct::{dct_3d, dct_init, idct_3d};
use latentflow_testutil::{load, rel_err_f64 as rel_err};

#[test]
fn the_transform_matches_torch_dct_and_inverts() {
    let r = load("video-ref/dct.safetensors");
    let ours = dct_3d(&r["x"]).unwrap();
    let e = rel_err(&ours, &r["dct"]);
    assert!(e <= 1e-12, "DCT: relative error {e:e}");
    let back = idct_3d(&ours).unwrap();
    let e = rel_err(&back, &r["x"]);
    assert!(e <= 1e-12, "inverse: relative error {e:e}");
    // f32 in, f32 out, computed in f64.
    let x32 = r["x"].to_dtype(DType::F32).unwrap();
    assert_eq!(dct_3d(&x32).unwrap().dtype(), DType::F32);
}

#[test]
fn dct_init_matches_the_authors_mix() {
    let r = load("video-ref/dct.safetensors");
    let alpha_bar: Vec<f64> = r["alpha_bar"].to_vec1().unwrap();
    let noise = r["noise"].to_dtype(DType::F64).unwrap();
    let z = dct_init(&r["base"], &noise, alpha_bar[0], 0.23).unwrap();
    // Their noise's DCT runs in f32 (the noise is f32), ours in f64.
    let e = rel_err(&z, &r["z_t"]);
    assert!(e <= 1e-6, "DCTInit: relative error {e:e}");
    let nothing_kept = dct_init(&r["base"], &noise, alpha_bar[0], 0.0).unwrap();
    assert!(
        rel_err(&nothing_kept, &noise) <= 1e-12,
        "cutoff 0 gives the noise"
    );
    let all_kept = dct_init(&r["base"], &noise, alpha_bar[0], 1.0).unwrap();
    assert!(
        rel_err(&all_kept, &r["noised"]) <= 1e-6,
        "cutoff 1 gives the noised latent"
    );
    // A 4-D image latent is one frame.
    let flat = r["base"].squeeze(2).unwrap();
    assert!(rel_err(&dct_init(&flat, &noise, alpha_bar[0], 0.23).unwrap(), &z) == 0.0);
}

#[test]
fn bad_shapes_and_settings_are_refused() {
    let dev = Device::Cpu;
    let noise = Tensor::zeros((1, 4, 3, 8, 8), DType::F32, &dev).unwrap();
    let wrong = Tensor::zeros((1, 4, 1, 8, 9), DType::F32, &dev).unwrap();
    let e = dct_init(&wrong, &noise, 0.5, 0.2).unwrap_err().to_string();
    assert!(e.contains("1×4×1×8×8"), "{e}");
    let image = Tensor::zeros((1, 4, 1, 8, 8), DType::F32, &dev).unwrap();
    assert!(dct_init(&image, &noise, 1.5, 0.2).is_err());
    assert!(dct_init(&image, &noise, 0.5, -0.1).is_err());
    let flat = Tensor::zeros((8, 8), DType::F32, &dev).unwrap();
    assert!(dct_3d(&flat).is_err());
}
