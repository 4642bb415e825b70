//! The tiny AutoencoderKL (tests/fixtures/tiny-sd/vae, random weights, made by
//! tools/reference/make_vae_fixtures.py) matches diffusers: decoder output and posterior mean,
//! error max|ours − ref| / max|ref| ≤ 1e-5.

use std::path::Path;

use latentflow_models::sd::vae::{Vae, VaeConfig};
use latentflow_models::Checked;
use latentflow_testutil::rel_err;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

/// Each item of a batch decodes (and encodes) as it does alone. candle 0.11's batched matmul
/// with a transposed left side made every item after the first wrong in the mid-block
/// attention; batches of frames and of images go through here.
#[test]
fn a_batch_decodes_and_encodes_item_by_item() {
    use candle_core::{Device, Tensor};
    let vae = Vae::load(&fixture_dir().join("vae")).expect("tiny VAE loads");
    let z = (Tensor::randn(0f32, 1.0, (3, 4, 12, 8), &Device::Cpu).unwrap() * 5.0).unwrap();
    let img = Tensor::rand(-1f32, 1.0, (3, 3, 24, 16), &Device::Cpu).unwrap();
    let (dec, enc) = (
        vae.decode_raw(&z).unwrap(),
        vae.encode_mean_raw(&img).unwrap(),
    );
    for i in 0..3 {
        let one = vae.decode_raw(&z.narrow(0, i, 1).unwrap()).unwrap();
        let e = rel_err(&dec.narrow(0, i, 1).unwrap(), &one);
        assert!(e <= 1e-6, "decoded item {i}: {e:e}");
        let one = vae.encode_mean_raw(&img.narrow(0, i, 1).unwrap()).unwrap();
        let e = rel_err(&enc.narrow(0, i, 1).unwrap(), &one);
        assert!(e <= 1e-6, "encoded item {i}: {e:e}");
    }
}

#[test]
fn decode_and_encode_match_diffusers() {
    let dir = fixture_dir();
    let vae = Vae::load(&dir.join("vae")).expect("tiny VAE loads");
    let io = latentflow_testutil::load("tiny-sd/vae_io.safetensors");
    let decoded = vae.decode_raw(&io["latent"]).expect("decode");
    let e = rel_err(&decoded, &io["decoded"]);
    eprintln!("decode relative error {e:e}");
    assert!(e <= 1e-5, "decode error {e:e}");
    let mean = vae.encode_mean_raw(&io["image"]).expect("encode");
    let e = rel_err(&mean, &io["encoded_mean"]);
    eprintln!("encode relative error {e:e}");
    assert!(e <= 1e-5, "encode error {e:e}");
}

#[test]
fn unsupported_configs_name_the_field() {
    let dir = tempfile_dir();
    let cfg = std::fs::read_to_string(fixture_dir().join("vae/config.json")).expect("config");
    std::fs::write(dir.join("config.json"), cfg.replace("\"silu\"", "\"gelu\"")).expect("write");
    let e = VaeConfig::from_file(&dir.join("config.json"))
        .map(|_| ())
        .expect_err("refused");
    assert!(e.to_string().contains("act_fn"), "{e}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lf-vae-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}
