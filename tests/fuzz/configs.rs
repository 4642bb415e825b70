//! Model configurations: mutated `config.json` files of the tiny fixtures. A config is either
//! refused with the file and field named, or it builds a model that runs a forward pass
//! (zero weights, small inputs) without a panic: the class of bugs where a config passes its
//! checks and then divides by zero or indexes out of bounds deep inside a model.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use latentflow_models::sd::clip::{ClipConfig, ClipTextModel};
use latentflow_models::sd::unet::{Extras, UNet, UNetConfig};
use latentflow_models::sd::vae::{Vae, VaeConfig};
use latentflow_models::Checked;
use latentflow_tests::workspace_root;
use proptest::prelude::*;
use serde_json::{json, Value};

/// One change to a config: set (or add) a key.
#[derive(Debug, Clone)]
struct Change {
    key: usize,
    value: Value,
}

const BLOCKS: &[&str] = &[
    "CrossAttnDownBlock2D",
    "DownBlock2D",
    "CrossAttnUpBlock2D",
    "UpBlock2D",
    "DownEncoderBlock2D",
    "UpDecoderBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UNetMidBlock2D",
    "AttnDownBlock2D",
    "",
    "silu",
    "gelu",
    "quick_gelu",
    "mish",
    "default",
    "scale_shift",
    "positional",
    "fourier",
    "text_time",
    "timestep",
    "linear",
];

const EXTRA_KEYS: &[&str] = &[
    "num_attention_heads",
    "transformer_layers_per_block",
    "class_embed_type",
    "addition_embed_type",
    "encoder_hid_dim",
    "time_cond_proj_dim",
    "num_class_embeds",
    "projection_class_embeddings_input_dim",
    "mid_block_type",
    "only_cross_attention",
    "use_linear_projection",
    "upcast_attention",
    "shift_factor",
    "mid_block_add_attention",
];

fn small_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        0i64..5,
        Just(6),
        Just(8),
        Just(16),
        Just(32),
        Just(-1),
        Just(1 << 40)
    ]
}

fn value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => small_int().prop_map(Value::from),
        1 => prop_oneof![Just(0.0), Just(1e-5), Just(-1.0), Just(1e300), Just(0.5)].prop_map(Value::from),
        2 => (0..BLOCKS.len()).prop_map(|i| Value::from(BLOCKS[i])),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        3 => prop::collection::vec(prop_oneof![Just(0i64), Just(1), Just(2), Just(4), Just(8), Just(16), Just(32)], 0..5)
            .prop_map(|v| json!(v)),
        2 => prop::collection::vec(0..BLOCKS.len(), 0..5)
            .prop_map(|v| json!(v.iter().map(|&i| BLOCKS[i]).collect::<Vec<_>>())),
        1 => prop::collection::vec(small_int(), 0..4).prop_map(|v| json!([v])),
    ]
    .boxed()
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec(
        (any::<usize>(), value()).prop_map(|(key, value)| Change { key, value }),
        1..5,
    )
}

/// The largest integer anywhere in `v`.
fn largest(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::Array(a) => a.iter().map(largest).max().unwrap_or(0),
        Value::Object(o) => o.values().map(largest).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether the config at `path` is small enough to build with zero weights. (Real loading never
/// allocates from the config: stored tensors are checked against the shapes it asks for.)
/// `vocab_size` may be a real one.
fn small(path: &Path) -> bool {
    let Some(Value::Object(mut cfg)) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return false;
    };
    let vocab = cfg.remove("vocab_size").as_ref().map_or(0, largest);
    vocab <= 1 << 16 && largest(&Value::Object(cfg)) <= 1024
}

/// The fixture config at `rel` with `changes` applied; returns the file written.
fn mutated(rel: &str, changes: &[Change], dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join(rel)).expect("seed config");
    let mut cfg: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("seed JSON");
    let mut keys: Vec<String> = cfg.keys().cloned().collect();
    keys.extend(EXTRA_KEYS.iter().map(|k| k.to_string()));
    for c in changes {
        cfg.insert(keys[c.key % keys.len()].clone(), c.value.clone());
    }
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string(&cfg).expect("JSON")).expect("write");
    path
}

/// A refusal names the file (and, for a field check, the field).
fn refused(err: &dyn std::fmt::Display, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "the message names the file: {msg}"
    );
}

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

proptest! {
    #![proptest_config(crate::config(160))]

    #[test]
    fn unet_configs_are_refused_or_run(c in changes()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = mutated("tests/fixtures/tiny-sd/unet/config.json", &c, dir.path());
        let cfg = match UNetConfig::from_file(&path) {
            Ok(cfg) => cfg,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        let plan = cfg.plan().expect("a checked config plans");
        if !small(&path) {
            return Ok(());
        }
        let levels = cfg.block_out_channels.len();
        let (ctx_dim, in_ch) = (plan.context.first().copied().unwrap_or(1), cfg.in_channels);
        if levels > 4 || plan.layers.iter().any(|&l| l > 4) || ctx_dim > 64 || in_ch > 64 {
            return Ok(());
        }
        let unet = match UNet::new(cfg, zeros(), &path) {
            Ok(u) => u,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        for side in [16, 10] {
            let x = Tensor::zeros((1, in_ch, side, side), DType::F32, &Device::Cpu).expect("x");
            let ctx = Tensor::zeros((1, 3, ctx_dim), DType::F32, &Device::Cpu).expect("ctx");
            let _ = unet.forward(&x, 500.0, &ctx, &Extras::default());
        }
    }

    #[test]
    fn vae_configs_are_refused_or_run(c in changes()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = mutated("tests/fixtures/tiny-sd/vae/config.json", &c, dir.path());
        let cfg = match VaeConfig::from_file(&path) {
            Ok(cfg) => cfg,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        if !small(&path) {
            return Ok(());
        }
        let (levels, latent, input) = (cfg.block_out_channels.len(), cfg.latent_channels, cfg.in_channels);
        if levels > 4 || cfg.layers_per_block > 4 || latent > 64 || input > 64 {
            return Ok(());
        }
        let vae = match Vae::new(cfg, zeros(), &path) {
            Ok(v) => v,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        let z = Tensor::zeros((1, latent, 4, 4), DType::F32, &Device::Cpu).expect("z");
        let _ = vae.decode_raw(&z);
        let side = 4 * vae.downscale();
        let img = Tensor::zeros((1, input, side, side), DType::F32, &Device::Cpu).expect("img");
        let _ = vae.encode_mean_raw(&img);
    }

    #[test]
    fn text_encoder_configs_are_refused_or_run(c in changes()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = mutated("tests/fixtures/tiny-sd/text_encoder/config.json", &c, dir.path());
        let cfg = match ClipConfig::from_file(&path) {
            Ok(cfg) => cfg,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        if !small(&path) || cfg.vocab_size > 1 << 16 || cfg.hidden_size > 64 || cfg.intermediate_size > 256
            || cfg.num_hidden_layers > 8 || cfg.max_position_embeddings > 128 {
            return Ok(());
        }
        let (vocab, len) = (cfg.vocab_size as u32, cfg.max_position_embeddings.min(5));
        let model = match ClipTextModel::new(cfg, zeros(), &path) {
            Ok(m) => m,
            Err(e) => return { refused(&e, &path); Ok(()) },
        };
        let ids: Vec<u32> = (0..len as u32).map(|i| i % vocab).collect();
        let ids = Tensor::from_vec(ids, (1, len), &Device::Cpu).expect("ids");
        let _ = model.forward(&ids, None);
        let _ = model.forward(&ids, Some(1));
    }
}

/// How many generated configs pass the checks and run: a target that only ever sees refusals
/// tests nothing.
#[test]
fn the_seeds_run() {
    for (rel, run) in [
        ("tests/fixtures/tiny-sd/unet/config.json", 0),
        ("tests/fixtures/tiny-sd/vae/config.json", 1),
        ("tests/fixtures/tiny-sd/text_encoder/config.json", 2),
    ] {
        let path = workspace_root().join(rel);
        let ok = match run {
            0 => UNetConfig::from_file(&path).is_ok(),
            1 => VaeConfig::from_file(&path).is_ok(),
            _ => ClipConfig::from_file(&path).is_ok(),
        };
        assert!(ok, "{rel} is accepted");
    }
}
