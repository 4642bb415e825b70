//! The diffusion-transformer blocks against diffusers (tools/reference/make_nn_fixtures.py):
//! PatchEmbed with sine-cosine positions on a non-square latent (positions recomputed for its
//! grid), and adaLN-Zero with the timestep and class-label embedding, including the "no class"
//! label. Relative error ≤ 1e-5.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use latentflow_nn::{AdaLayerNormZero, PatchEmbed, PatchEmbedConfig, TimestepLabelEmbedding};
use latentflow_testutil::rel_err;

fn fixture() -> HashMap<String, Tensor> {
    latentflow_testutil::load("nn.safetensors")
}

fn builder(t: &HashMap<String, Tensor>, prefix: &str) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect();
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

#[test]
fn patch_embedding_matches_diffusers_on_a_non_square_grid() {
    let t = fixture();
    let cfg = PatchEmbedConfig {
        patch: 2,
        in_channels: 4,
        dim: 32,
        base_size: 4,
        interpolation_scale: 1.0,
        layer_norm: false,
    };
    let pe = PatchEmbed::new(builder(&t, "patch."), cfg).unwrap();
    let out = pe.forward(&t["patch.x"]).unwrap();
    assert_eq!(out.dims(), t["patch.out"].dims());
    let e = rel_err(&out, &t["patch.out"]);
    assert!(e <= 1e-5, "PatchEmbed error {e:e}");
}

#[test]
fn ada_layer_norm_zero_matches_diffusers() {
    let t = fixture();
    let emb = TimestepLabelEmbedding::new(builder(&t, "ada.emb."), 10, 32).unwrap();
    let ada = AdaLayerNormZero::new(builder(&t, "ada."), 32).unwrap();
    let floats = |name: &str| t[name].to_vec1::<f32>().unwrap();
    let steps: Vec<f64> = floats("ada.t").iter().map(|&v| v as f64).collect();
    let labels: Vec<u32> = floats("ada.labels").iter().map(|&v| v as u32).collect();
    let cond = emb.forward(&steps, &labels).unwrap();
    let (out, m) = ada.forward(&t["ada.x"], &cond).unwrap();
    for (name, ours) in [
        ("ada.out", &out),
        ("ada.gate_msa", &m.gate_msa),
        ("ada.shift_mlp", &m.shift_mlp),
        ("ada.scale_mlp", &m.scale_mlp),
        ("ada.gate_mlp", &m.gate_mlp),
    ] {
        let e = rel_err(ours, &t[name]);
        assert!(e <= 1e-5, "{name} error {e:e}");
    }
    assert!(emb.forward(&[1.0], &[11]).is_err(), "labels past the table");
}
