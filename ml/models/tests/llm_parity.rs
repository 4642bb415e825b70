//! T5, decoder-only LLMs, ELLA's connector and SUR-adapter against transformers and the
//! authors' modules (fixtures of tools/reference/make_llm_fixtures.py).

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use latentflow_models::ella::Ella;
use latentflow_models::llm::Decoder;
use latentflow_models::sur::{SurAdapter, SurMode};
use latentflow_models::t5::{T5Encoder, TextTokenizer};
use latentflow_testutil::{fixtures, load, max_abs, rel_err};

fn t5(dir: &str, dtype: DType) -> T5Encoder {
    let path = fixtures().join(dir);
    let config = fixtures().join("tiny-t5/config.json");
    let config = (!path.is_dir()).then_some(config.as_path());
    T5Encoder::load(&path, config, dtype, &Device::Cpu).unwrap()
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(&fixtures().join("tiny-t5"), 0).unwrap()
}

const PROMPTS: [&str; 3] = [
    "a cat",
    "a photo of a cat, best quality",
    "an astronaut riding a horse on the moon with a red flag and a blue sky",
];

fn ids(r: &HashMap<String, Tensor>, name: &str) -> Tensor {
    r[name].to_dtype(DType::U32).unwrap()
}

#[test]
fn t5_tokenizer_matches_transformers() {
    let r = load("llm-ref/t5.safetensors");
    let tok = tokenizer();
    let fixed = tok.encode(&PROMPTS, Some(16), &Device::Cpu).unwrap();
    assert_eq!(
        fixed.ids.to_vec2::<u32>().unwrap(),
        ids(&r, "fixed_ids").to_vec2::<u32>().unwrap()
    );
    assert_eq!(
        fixed.mask.to_vec2::<f32>().unwrap(),
        r["fixed_mask"].to_vec2::<f32>().unwrap()
    );
    let longest = tok.encode(&PROMPTS, None, &Device::Cpu).unwrap();
    assert_eq!(
        longest.ids.to_vec2::<u32>().unwrap(),
        ids(&r, "longest_ids").to_vec2::<u32>().unwrap()
    );
    assert_eq!(longest.lengths[2], longest.ids.dim(1).unwrap());
    // `</s>` = 1 ends every text, padding is 0.
    let first = tok.ids(PROMPTS[0]).unwrap();
    assert_eq!(first.last(), Some(&1));
}

#[test]
fn t5_encoder_matches_transformers_on_padded_batches() {
    let r = load("llm-ref/t5.safetensors");
    let model = t5("tiny-t5", DType::F32);
    for (kind, idn, maskn, want) in [
        ("fixed", "fixed_ids", "fixed_mask", "fixed_hidden"),
        ("longest", "longest_ids", "longest_mask", "longest_hidden"),
    ] {
        let out = model.forward(&ids(&r, idn), Some(&r[maskn])).unwrap();
        let e = rel_err(&out, &r[want]);
        assert!(e <= 1e-5, "{kind}: error {e:e}");
    }
    for i in 0..3 {
        let out = model
            .forward(&ids(&r, &format!("alone_{i}_ids")), None)
            .unwrap();
        let e = rel_err(&out, &r[&format!("alone_{i}_hidden")]);
        assert!(e <= 1e-5, "prompt {i} alone: error {e:e}");
    }
}

#[test]
fn without_the_mask_padding_changes_every_token() {
    // What candle-transformers' mask-less encoder gives: the padded prompt's real tokens differ.
    let r = load("llm-ref/t5.safetensors");
    let model = t5("tiny-t5", DType::F32);
    let ids = ids(&r, "fixed_ids");
    let unmasked = model.forward(&ids, None).unwrap();
    let n = r["alone_0_ids"].dim(1).unwrap();
    let real = unmasked.i((0, 0..n)).unwrap();
    let want = r["alone_0_hidden"].i(0).unwrap();
    assert!(rel_err(&real, &want) > 1e-2, "the mask must matter");
    let masked = model.forward(&ids, Some(&r["fixed_mask"])).unwrap();
    let e = rel_err(&masked.i((0, 0..n)).unwrap(), &want);
    assert!(e <= 1e-5, "masked padding leaves the tokens alone: {e:e}");
}

#[test]
fn t5_loads_bf16_shards_and_f16_single_files() {
    let r = load("llm-ref/t5.safetensors");
    let (i, m) = (ids(&r, "fixed_ids"), &r["fixed_mask"]);
    for dir in ["tiny-t5-sharded", "tiny-t5-f16.safetensors"] {
        let out = t5(dir, DType::F32).forward(&i, Some(m)).unwrap();
        let e = rel_err(&out, &r["fixed_hidden"]);
        assert!(e <= 1e-5, "{dir}: error {e:e}");
    }
}

#[test]
fn t5_bf16_compute_stays_close() {
    let r = load("llm-ref/t5.safetensors");
    let out = t5("tiny-t5-sharded", DType::BF16)
        .forward(&ids(&r, "fixed_ids"), Some(&r["fixed_mask"]))
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    // transformers itself, in bf16 on these weights, is 6.7e-2 from its f32 output (the
    // tiny model's weights are large: N(0, 0.3)); we keep the scores in f32 and do better.
    let e = rel_err(&out, &r["fixed_hidden"]);
    assert!(e <= 6e-2, "bf16 compute: error {e:e}");
}

#[test]
fn decoder_hidden_states_match_transformers() {
    for family in ["llama", "mistral", "qwen2", "qwen3"] {
        let r = load(&format!("llm-ref/llm_{family}.safetensors"));
        let dir = fixtures().join("tiny-llm").join(family);
        let model = Decoder::load(&dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.hidden_states(), 4);
        let tok = TextTokenizer::from_file(&dir, 0).unwrap();
        let enc = tok
            .encode(
                &[
                    "a photo of a cat, best quality",
                    "two dogs playing in the snow at night",
                ],
                None,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(
            enc.ids.to_vec2::<u32>().unwrap(),
            ids(&r, "ids").to_vec2::<u32>().unwrap(),
            "{family}: token ids"
        );
        for (layer, name) in [
            (0, "hidden_0"),
            (-2, "hidden_m2"),
            (-1, "hidden_m1"),
            (3, "hidden_m1"),
        ] {
            let out = model
                .hidden_state(&enc.ids, Some(&enc.mask), layer)
                .unwrap();
            let e = rel_err(&out, &r[name]);
            assert!(e <= 1e-5, "{family} hidden_states[{layer}]: error {e:e}");
        }
        let err = model
            .hidden_state(&enc.ids, Some(&enc.mask), 4)
            .err()
            .unwrap();
        assert!(err.to_string().contains("this model has 4"), "{err}");
    }
}

fn ella() -> Ella {
    Ella::load(&fixtures().join("tiny-ella.safetensors"), 4, &Device::Cpu).unwrap()
}

#[test]
fn ella_connector_matches_the_authors_module() {
    let r = load("llm-ref/ella.safetensors");
    let model = ella();
    assert_eq!(model.config.layers, 2);
    assert_eq!(model.config.num_latents, 8);
    for l in [5, 11] {
        for t in [0, 500, 999] {
            let out = model
                .forward(&r[&format!("features_{l}")], t as f64)
                .unwrap();
            assert_eq!(out.dims(), &[2, 8, 32], "the shape does not depend on L");
            let e = rel_err(&out, &r[&format!("out_{l}_t{t}")]);
            assert!(e <= 1e-5, "L {l}, t {t}: error {e:e}");
        }
    }
}

#[test]
fn ella_with_zeroed_blocks_gives_the_time_aware_latents() {
    let r = load("llm-ref/ella.safetensors");
    let w = candle_core::safetensors::load(fixtures().join("tiny-ella.safetensors"), &Device::Cpu)
        .unwrap();
    let mut zeroed = HashMap::new();
    for (k, v) in w {
        let z = k.contains(".ln_") || k.contains("out_proj") || k.contains("c_proj");
        zeroed.insert(k, if z { v.zeros_like().unwrap() } else { v });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeroed.safetensors");
    candle_core::safetensors::save(&zeroed, &path).unwrap();
    let model = Ella::load(&path, 4, &Device::Cpu).unwrap();
    let out = model.forward(&r["features_5"], 500.0).unwrap();
    let e = rel_err(&out, &r["zeroed_out_5_t500"]);
    assert!(e <= 1e-5, "zeroed blocks: error {e:e}");
    // Whatever the features, the output is the learned latents plus the time-aware term.
    let other = model.forward(&r["features_11"], 500.0).unwrap();
    assert!(max_abs(&(other - &out).unwrap()) < 1e-6);
}

#[test]
fn ella_refuses_features_of_another_width() {
    let model = ella();
    let x = Tensor::zeros((1, 4, 48), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, 10.0).err().unwrap().to_string();
    assert!(err.contains("B×L×32"), "{err}");
}

#[test]
fn sur_adapter_matches_the_authors_module() {
    let r = load("llm-ref/sur.safetensors");
    let model = SurAdapter::load(&fixtures().join("tiny-sur.safetensors"), &Device::Cpu).unwrap();
    let out = model
        .forward(&r["context"], 0.1, SurMode::Faithful)
        .unwrap();
    let e = rel_err(&out, &r["adapted"]);
    assert!(e <= 1e-5, "faithful, [negative; positive]: error {e:e}");
    let pos = r["context"].i(1..2).unwrap();
    let alone = model.forward(&pos, 0.1, SurMode::Faithful).unwrap();
    let e = rel_err(&alone, &r["positive_alone"]);
    assert!(e <= 1e-5, "faithful, one row: error {e:e}");
    // The faithful mode mixes the rows; per-prompt attention does not.
    let tokens = model.forward(&r["context"], 0.1, SurMode::Tokens).unwrap();
    let tokens_alone = model.forward(&pos, 0.1, SurMode::Tokens).unwrap();
    assert!(max_abs(&(tokens.i(1..2).unwrap() - &tokens_alone).unwrap()) < 1e-6);
    assert!(max_abs(&(out.i(1..2).unwrap() - &alone).unwrap()) > 1e-6);
    // β = 0 gives back the context.
    let same = model
        .forward(&r["context"], 0.0, SurMode::Faithful)
        .unwrap();
    assert!(max_abs(&(same - &r["context"]).unwrap()) < 1e-7);
}
