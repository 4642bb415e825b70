//! VQModel against diffusers (tools/reference/make_tpm_fixtures.py): the latent, the codes,
//! Tiramisu's soft codes and both decodes, on a non-square image.

use candle_core::DType;
use latentflow_models::vq::VqModel;
use latentflow_testutil::{fixtures, load, rel_err};

#[test]
fn vq_model_matches_diffusers() {
    let r = load("tpm-ref/vq.safetensors");
    let vq = VqModel::load(&fixtures().join("tiny-vq")).unwrap();
    assert_eq!(vq.downscale(), 2);
    let latent = vq.encode(&r["image"]).unwrap();
    let e = rel_err(&latent, &r["latent"]);
    assert!(e <= 1e-5, "latent: error {e:e}");
    let codes = vq.codes(&r["latent"]).unwrap();
    assert_eq!(
        codes
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
        r["codes"]
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    );
    let lp = vq.code_log_probs(&r["latent"]).unwrap();
    let e = rel_err(&lp, &r["code_log_probs"]);
    assert!(e <= 1e-5, "soft codes: error {e:e}");
    for (name, out) in [
        ("decoded", vq.decode(&r["latent"]).unwrap()),
        ("decoded_codes", vq.decode_codes(&codes).unwrap()),
    ] {
        let e = rel_err(&out, &r[name]);
        assert!(e <= 1e-5, "{name}: error {e:e}");
    }
    let bad = candle_core::Tensor::new(&[[[40u32]]], &candle_core::Device::Cpu).unwrap();
    assert!(vq
        .decode_codes(&bad)
        .unwrap_err()
        .to_string()
        .contains("32-entry codebook"));
}
