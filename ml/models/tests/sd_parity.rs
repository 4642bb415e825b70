//! The tiny SD pipeline (tests/fixtures/tiny-sd, random weights, made by
//! tools/reference/make_sd_fixtures.py) matches transformers/diffusers: tokenizer ids on a
//! 60-prompt corpus, CLIP hidden states, one UNet forward, and the same from the single-file
//! checkpoint. Error: max|ours − ref| / max|ref| ≤ 1e-5.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use latentflow_models::sd::clip::ClipTextModel;
use latentflow_models::sd::deepcache;
use latentflow_models::sd::loader::{self as models, Source};
use latentflow_models::sd::tokenizer::ClipTokenizer;
use latentflow_models::sd::unet::{Extras as Hooks, UNet};
use latentflow_models::Checked;
use latentflow_testutil::{fixtures, max_diff, rel_err};

fn load(name: &str) -> HashMap<String, Tensor> {
    latentflow_testutil::load(&format!("sd-ref/{name}"))
}

#[derive(serde::Deserialize)]
struct Row {
    prompt: String,
    ids: Vec<u32>,
}

fn corpus() -> Vec<Row> {
    let text = std::fs::read_to_string(fixtures().join("sd-ref/tokenizer.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_tokenizer(tok: &ClipTokenizer, what: &str) {
    let rows = corpus();
    assert!(rows.len() >= 50);
    assert!(
        rows.iter().any(|r| r.ids.len() > 77),
        "the corpus has a long prompt"
    );
    let mut bad = Vec::new();
    for r in &rows {
        let mut ids = vec![tok.bos];
        ids.extend(tok.encode(&r.prompt).unwrap());
        ids.push(tok.eos);
        if ids != r.ids {
            bad.push(format!(
                "{:?}\n  ours {:?}\n  ref  {:?}",
                r.prompt, ids, r.ids
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} prompts differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn tokenizer_matches_transformers_on_the_corpus() {
    let tok = ClipTokenizer::load(&fixtures().join("tiny-sd/tokenizer")).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.pad), (49406, 49407, 49407));
    check_tokenizer(&tok, "vocab.json + merges.txt");
}

#[test]
fn tokenizer_from_the_original_bpe_file_matches_too() {
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/bpe_simple_vocab_16e6.txt.gz");
    check_tokenizer(
        &ClipTokenizer::load(&gz).unwrap(),
        "bpe_simple_vocab_16e6.txt.gz",
    );
}

fn check_clip(model: &ClipTextModel) {
    let r = load("clip.safetensors");
    let ids = r["ids"].to_dtype(DType::U32).unwrap();
    let out = model.forward(&ids, None).unwrap();
    let n = out.hidden.len();
    let e_last = rel_err(&out.last, &r["last"]);
    let e_pen = rel_err(&out.hidden[n - 2], &r["penultimate"]);
    let e_pool = rel_err(&out.pooled, &r["pooled"]);
    eprintln!("CLIP: last {e_last:e}, penultimate {e_pen:e}, pooled {e_pool:e}");
    assert!(
        e_last <= 1e-5 && e_pen <= 1e-5 && e_pool <= 1e-5,
        "last {e_last:e}, penultimate {e_pen:e}, pooled {e_pool:e}"
    );
}

fn check_unet(unet: &UNet) {
    check_unet_against(unet, "unet.safetensors", 421.0);
}

/// The UNet's output for the fixture's `x` and `context` at `t` is its `out` to 1e-5.
fn check_unet_against(unet: &UNet, fixture: &str, t: f64) {
    let r = load(fixture);
    let out = unet
        .forward(&r["x"], t, &r["context"], &Hooks::default())
        .unwrap();
    let e = rel_err(&out, &r["out"]);
    eprintln!("{fixture}: UNet forward error {e:e}");
    assert!(e <= 1e-5, "{fixture}: UNet forward error {e:e}");
}

#[test]
fn clip_text_encoder_matches_transformers() {
    let m = ClipTextModel::load(&fixtures().join("tiny-sd/text_encoder"), &Device::Cpu).unwrap();
    check_clip(&m);
}

#[test]
fn unet_forward_matches_diffusers() {
    let unet = UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap();
    check_unet(&unet);
}

#[test]
fn single_file_checkpoint_loads_the_same_model() {
    let src = Source::detect(
        &fixtures().join("tiny-sd-single.safetensors"),
        Some(&fixtures().join("tiny-sd")),
    )
    .unwrap();
    check_unet(&models::unet(&src, candle_core::DType::F32).unwrap().unet);
    check_clip(&models::text_encoder(&src).unwrap().model);
    let vae = models::vae(&src).unwrap();
    let io =
        candle_core::safetensors::load(fixtures().join("tiny-sd/vae_io.safetensors"), &Device::Cpu)
            .unwrap();
    let e = rel_err(&vae.decode_raw(&io["latent"]).unwrap(), &io["decoded"]);
    assert!(e <= 1e-5, "VAE decode from the checkpoint: {e:e}");
    let e = rel_err(
        &vae.encode_mean_raw(&io["image"]).unwrap(),
        &io["encoded_mean"],
    );
    assert!(e <= 1e-5, "VAE encode from the checkpoint: {e:e}");
}

#[test]
fn a_model_used_twice_is_loaded_once() {
    let src = Source::detect(&fixtures().join("tiny-sd"), None).unwrap();
    let a = models::unet(&src, candle_core::DType::F32).unwrap();
    let b = models::unet(&src, candle_core::DType::F32).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn unsupported_configs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-sd/unet/config.json")).unwrap(),
    )
    .unwrap();
    cfg["addition_embed_type"] = "image".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = latentflow_models::sd::unet::UNetConfig::from_file(&dir.path().join("config.json"))
        .unwrap_err();
    assert!(err.to_string().contains("addition_embed_type"), "{err}");
    cfg["addition_embed_type"] = serde_json::Value::Null;
    cfg["up_block_types"] = serde_json::json!(["UpBlock2D", "AttnUpBlock2D"]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = latentflow_models::sd::unet::UNetConfig::from_file(&dir.path().join("config.json"))
        .unwrap_err();
    assert!(err.to_string().contains("AttnUpBlock2D"), "{err}");
}

#[test]
fn unet_config_variants_match_diffusers() {
    // Linear projections, explicit head counts, 2 transformer layers, per-block layer counts,
    // three levels, sin-first embeddings with a frequency shift, and an odd 9×11 latent.
    let unet = UNet::load(&fixtures().join("tiny-unet-variant"), &Device::Cpu).unwrap();
    check_unet_against(&unet, "unet_variant.safetensors", 77.0);
}

#[test]
fn deepcache_refresh_steps_are_the_plain_unet_bit_for_bit() {
    let unet = UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap();
    let r = load("unet.safetensors");
    let plain = unet
        .forward(&r["x"], 421.0, &r["context"], &Hooks::default())
        .unwrap();
    for branch in [0, 1, 2] {
        let mut cache = None;
        let mut step = |refresh: bool| {
            let extras = Hooks::default();
            deepcache::forward(
                &unet,
                &r["x"],
                421.0,
                &r["context"],
                &extras,
                branch,
                &mut cache,
                refresh,
            )
            .unwrap()
        };
        let full = step(true);
        let d = max_diff(&full, &plain);
        assert_eq!(d, 0.0, "branch {branch}");
        // A retrieval step at the same input and timestep reuses the feature it would compute.
        let again = step(false);
        assert!(cache.is_some());
        let d = max_diff(&again, &plain);
        assert!(d < 1e-5, "branch {branch}: {d}");
    }
    assert!(
        deepcache::entry(&unet, 6).is_err(),
        "the tiny UNet has two blocks"
    );
}

#[test]
fn controlnet_residuals_and_the_unet_with_them_match_diffusers() {
    let cn =
        latentflow_models::sd::controlnet::ControlNet::load(&fixtures().join("tiny-controlnet"))
            .unwrap();
    let unet = UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap();
    let r = load("controlnet.safetensors");
    for (guess, prefix) in [(false, ""), (true, "guess_")] {
        let res = cn
            .forward(&r["x"], 421.0, &r["context"], &r["cond"], 0.8, guess)
            .unwrap();
        for (i, d) in res.down.iter().enumerate() {
            let e = rel_err(d, &r[&format!("{prefix}down_{i}")]);
            assert!(e <= 1e-5, "{prefix}down residual {i}: {e:e}");
        }
        let e = rel_err(&res.mid, &r[&format!("{prefix}mid")]);
        assert!(e <= 1e-5, "{prefix}mid residual: {e:e}");
        if !guess {
            let hooks = Hooks {
                down_residuals: Some(&res.down),
                mid_residual: Some(&res.mid),
                ..Hooks::default()
            };
            let out = unet.forward(&r["x"], 421.0, &r["context"], &hooks).unwrap();
            let e = rel_err(&out, &r["unet_out"]);
            eprintln!("UNet with ControlNet residuals: {e:e}");
            assert!(e <= 1e-5, "UNet with residuals: {e:e}");
        }
    }
}

#[test]
fn daam_aggregation_matches_the_reference() {
    use latentflow_models::sd::daam::Accumulator;
    let r = load("../daam.safetensors");
    let (lh, lw, tokens, heads) = (32, 48, 7, 2);
    let mut acc = Accumulator::new(lh, lw, 8);
    for step in 0..2 {
        for (layer, f) in [2usize, 4, 8].iter().enumerate() {
            let probs = r[&format!("probs_{step}_{layer}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            acc.add(
                &format!("layer{layer}"),
                heads,
                (lh / f) * (lw / f),
                tokens,
                &probs,
            );
        }
    }
    assert_eq!(acc.len(), 2, "the factor-8 layer is skipped");
    let (t, maps) = acc.global_maps();
    assert_eq!(t, tokens);
    let ours = Tensor::from_vec(maps, (tokens, lh, lw), &Device::Cpu).unwrap();
    let e = rel_err(&ours, &r["global"]);
    eprintln!("DAAM global maps: {e:e}");
    assert!(e <= 1e-5, "DAAM global maps: {e:e}");
}

#[test]
fn lora_merges_like_diffusers_fuse_lora_and_shares_untouched_weights() {
    use latentflow_models::sd::lora;
    let src = Source::detect(&fixtures().join("tiny-sd"), None).unwrap();
    let base_unet = models::unet(&src, candle_core::DType::F32).unwrap();
    let base_te = models::text_encoder(&src).unwrap();
    let r = load("lora.safetensors");
    let u = load("unet.safetensors");
    let c = load("clip.safetensors");
    for file in ["kohya.safetensors", "peft.safetensors"] {
        let updates = lora::read(&fixtures().join("lora").join(file)).unwrap();
        let (unet, applied) = lora::unet_with(&base_unet, &updates, 0.7).unwrap();
        assert_eq!(applied.patched, 5, "{file}: UNet modules");
        assert!(
            applied.unmatched.is_empty(),
            "{file}: {:?}",
            applied.unmatched
        );
        let out = unet
            .unet
            .forward(&u["x"], 421.0, &u["context"], &Hooks::default())
            .unwrap();
        let e = rel_err(&out, &r["unet_out"]);
        eprintln!("{file}: LoRA UNet {e:e}");
        assert!(e <= 1e-5, "{file}: LoRA UNet {e:e}");
        let (te, applied) = lora::text_encoder_with(&base_te, &updates, 0.7).unwrap();
        assert_eq!(applied.patched, 2, "{file}: text encoder modules");
        let ids = c["ids"].to_dtype(DType::U32).unwrap();
        let e = rel_err(&te.model.forward(&ids, None).unwrap().last, &r["te_last"]);
        assert!(e <= 1e-5, "{file}: LoRA text encoder {e:e}");
        // Untouched weights are the base model's tensors, not copies.
        let name = "conv_in.weight";
        assert_eq!(
            unet.store.get(name).unwrap().id(),
            base_unet.store.get(name).unwrap().id()
        );
        let touched = "down_blocks.0.resnets.0.conv1.weight";
        assert_ne!(
            unet.store.get(touched).unwrap().id(),
            base_unet.store.get(touched).unwrap().id()
        );
    }
    // The LoRA changes the output (the fixture would not catch a no-op otherwise).
    let plain = base_unet
        .unet
        .forward(&u["x"], 421.0, &u["context"], &Hooks::default())
        .unwrap();
    assert!(rel_err(&plain, &r["unet_out"]) > 1e-4);
}

#[test]
fn deepcache_quad_schedule_matches_the_package() {
    #[derive(serde::Deserialize)]
    struct Case {
        steps: usize,
        interval: usize,
        refresh: Option<Vec<usize>>,
    }
    let text = std::fs::read_to_string(fixtures().join("deepcache_quad.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    let mut bad = Vec::new();
    for c in &cases {
        let ours =
            latentflow_models::sd::deepcache::quad_center_schedule(c.steps, c.interval, 15.0, 1.4);
        if ours != c.refresh {
            bad.push(format!(
                "steps {} interval {}: ours {:?}, ref {:?}",
                c.steps, c.interval, ours, c.refresh
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn unet_features_and_the_segmentation_head_match_torch() {
    let unet = UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap();
    let r = load("seghead.safetensors");
    let feats = unet.features(&r["x"], 1.0, &r["context"]).unwrap();
    assert_eq!(feats.len(), 2);
    for (k, f) in feats.iter().enumerate() {
        let e = rel_err(f, &r[&format!("feature_{k}")]);
        assert!(e <= 1e-5, "feature level {k}: {e:e}");
    }
    let head =
        latentflow_models::sd::seghead::SegHead::load(&fixtures().join("seghead/head.safetensors"))
            .unwrap();
    assert_eq!(head.classes, vec!["sky", "cat", "sofa"]);
    let e = rel_err(&head.forward(&feats).unwrap(), &r["logits"]);
    eprintln!("segmentation head logits: {e:e}");
    assert!(e <= 1e-5, "logits: {e:e}");
}

#[test]
fn single_file_controlnet_loads_like_its_folder() {
    use latentflow_models::sd::controlnet::ControlNet;
    let folder = ControlNet::load(&fixtures().join("tiny-controlnet")).unwrap();
    let single = ControlNet::load_with(
        &fixtures().join("tiny-controlnet-single.safetensors"),
        Some(&fixtures().join("tiny-controlnet")),
    )
    .unwrap();
    let r = load("controlnet.safetensors");
    let a = folder
        .forward(&r["x"], 421.0, &r["context"], &r["cond"], 0.8, false)
        .unwrap();
    let b = single
        .forward(&r["x"], 421.0, &r["context"], &r["cond"], 0.8, false)
        .unwrap();
    for (x, y) in a.down.iter().zip(&b.down) {
        assert_eq!(rel_err(y, x), 0.0);
    }
    assert_eq!(rel_err(&b.mid, &a.mid), 0.0);
    let bad = ControlNet::load(&fixtures().join("tiny-sd-single.safetensors"));
    assert!(bad.is_err_and(|e| e.to_string().contains("not a single-file ControlNet")));
}

#[test]
fn deepcache_retrieval_steps_run_the_modules_of_the_skip_rule() {
    // Tiny UNet: down 0 = 2×(resnet+attn), down 1 = 2 resnets, mid = resnet+attn+resnet,
    // up 0 = 3 resnets, up 1 = 3×(resnet+attn): 4 + 2 + 3 + 3 + 6 = 18 modules.
    let unet = UNet::load(&fixtures().join("tiny-sd/unet"), &Device::Cpu).unwrap();
    // Branch 0: only up_blocks[1]'s last layer (resnet + attention).
    assert_eq!(deepcache::modules(&unet, 0).unwrap(), (2, 18));
    // Branch 1: plus down_blocks[0] layer 0 and up_blocks[1] layer 1.
    assert_eq!(deepcache::modules(&unet, 1).unwrap(), (6, 18));
}

#[test]
fn vpd_features_with_cross_attention_maps_match_diffusers() {
    let unet = UNet::load(&fixtures().join("tiny-unet-variant"), &Device::Cpu).unwrap();
    let inputs = load("unet_variant.safetensors");
    let r = load("vpd_variant.safetensors");
    let feats = unet
        .features_with(&inputs["x"], 1.0, &inputs["context"], true)
        .unwrap();
    assert_eq!(feats.len(), 3);
    assert_eq!(
        feats[1].dims(),
        &[1, 37, 5, 6],
        "32 channels + 5 token maps"
    );
    for (k, f) in feats.iter().enumerate() {
        let e = rel_err(f, &r[&format!("feature_{k}")]);
        assert!(e <= 1e-5, "level {k}: {e:e}");
    }
}

#[test]
fn a_tokenizer_folder_with_only_tokenizer_json_matches_too() {
    // What transformers 5 writes (the default model ships one): tokenizer.json and a config,
    // no vocab.json / merges.txt.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-shapes/tokenizer");
    assert!(!dir.join("vocab.json").exists() && dir.join("tokenizer.json").exists());
    let tok = ClipTokenizer::load(&dir).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.pad), (49406, 49407, 49407));
    check_tokenizer(&tok, "tokenizer.json");
}

#[test]
fn a_broken_vocab_or_merges_file_is_named() {
    let src = fixtures().join("tiny-sd/tokenizer");
    for (file, junk) in [
        ("vocab.json", "{\"a\": \"not an id\"}"),
        ("merges.txt", "#version: 0.2\na b c\n"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "vocab.json",
            "merges.txt",
            "special_tokens_map.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join(file), junk).unwrap();
        let err = ClipTokenizer::load(dir.path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&dir.path().join(file).display().to_string()),
            "{err}"
        );
    }
}
