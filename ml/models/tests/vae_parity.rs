//! The tiny AutoencoderKL (tests/fixtures/tiny-sd/vae, random weights, made by
//! tools/reference/make_vae_fixtures.py) matches diffusers: decoder output and posterior mean,
//! error max|ours − ref| / max|ref| ≤ 1e-5.

use std::path::Path;

use candle_core::{Device, Tensor};
use latentflow_models::sd::vae::{Vae, VaeConfig};
use safetensors::SafeTensors;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

fn load(st: &SafeTensors, name: &str) -> Tensor {
    let v = st.tensor(name).expect(name);
    let data: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_vec(data, v.shape(), &Device::Cpu).expect("tensor")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let max = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / max
}

#[test]
fn decode_and_encode_match_diffusers() {
    let dir = fixture_dir();
    let vae = Vae::load(&dir.join("vae")).expect("tiny VAE loads");
    let bytes = std::fs::read(dir.join("vae_io.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let decoded = vae.decode_raw(&load(&st, "latent")).expect("decode");
    let e = rel_err(&decoded, &load(&st, "decoded"));
    eprintln!("decode relative error {e:e}");
    assert!(e <= 1e-5, "decode error {e:e}");
    let mean = vae.encode_mean_raw(&load(&st, "image")).expect("encode");
    let e = rel_err(&mean, &load(&st, "encoded_mean"));
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
