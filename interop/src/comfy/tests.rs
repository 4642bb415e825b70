//! Conversion tests on small workflows written here to ComfyUI's documented formats (the
//! template corpus runs end to end in `tests/e2e/comfy_import.rs`).

use super::*;

/// The API-format txt2img prompt of ComfyUI's `script_examples/basic_api_example.py`.
const API_TXT2IMG: &str = r#"{
  "3": {"class_type": "KSampler", "inputs": {"cfg": 8, "denoise": 1, "latent_image": ["5", 0],
        "model": ["4", 0], "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler",
        "scheduler": "normal", "seed": 8566257, "steps": 20}},
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512, "width": 512}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece best quality girl"}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
}"#;

#[test]
fn api_txt2img_becomes_a_readable_graph() {
    let g = import(API_TXT2IMG, "basic.json").unwrap();
    let y = &g.yaml;
    assert!(
        y.contains("  checkpoint: {type: path, default: \"v1-5-pruned-emaonly.safetensors\""),
        "{y}"
    );
    assert!(
        y.contains("  prompt: {type: string, default: \"masterpiece best quality girl\""),
        "{y}"
    );
    assert!(
        y.contains("  negative: {type: string, default: \"bad hands\""),
        "{y}"
    );
    assert!(y.contains("  seed: {type: seed, default: 8566257"), "{y}");
    assert!(y.contains("  # ComfyUI node 3 (KSampler)\n  sample_3:\n    type: samplers.sample\n    inputs: {model: checkpoint_4.model, positive: positive_6.conditioning, negative: negative_7.conditioning, latent: latent_5.latent}\n    params: {kind: \"euler\", steps: $steps, cfg: $cfg, seed: $seed, strength: 1}"), "{y}");
    assert!(y.contains("filename: \"ComfyUI.png\""), "{y}");
    assert!(
        y.contains(
            "params: {width: $width, height: $height, batch: $batch, channels: 4, downscale: 8}"
        ),
        "{y}"
    );
    // `normal` is close to, not the same as, diffusers spacing: said, not hidden.
    assert!(
        g.report
            .notes
            .iter()
            .any(|n| n.node == "3" && n.message.contains("normal")),
        "{:?}",
        g.report.notes
    );
    let back: serde_json::Value = serde_saphyr::from_str(y).unwrap();
    assert_eq!(back["nodes"].as_object().unwrap().len(), 7);
}

#[test]
fn the_client_body_with_a_prompt_field_is_accepted() {
    let body = format!(r#"{{"prompt": {API_TXT2IMG}, "client_id": "x"}}"#);
    assert!(import(&body, "body.json").is_ok());
}

#[test]
fn unmapped_nodes_are_listed_with_id_and_class_and_nothing_is_written() {
    let wf = API_TXT2IMG
        .replace("\"euler\"", "\"dpmpp_sde\"")
        .replace(
            "\"8\": {\"class_type\": \"VAEDecode\"",
            "\"10\": {\"class_type\": \"FluxGuidance\", \"inputs\": {}},\n  \"8\": {\"class_type\": \"VAEDecode\"",
        );
    let err = import(&wf, "x.json").unwrap_err();
    let ImportError::Unmapped { report } = &err else {
        panic!("{err}");
    };
    let text = err.to_string();
    assert!(
        text.contains("node 3 (KSampler): sampler `dpmpp_sde` has no LatentFlow equivalent"),
        "{text}"
    );
    // FluxGuidance leads nowhere but nobody consumes it: it may be an output, so it is listed.
    assert!(
        text.contains("node 10 (FluxGuidance): no LatentFlow equivalent"),
        "{text}"
    );
    assert_eq!(report.unmapped.len(), 2);
}

#[test]
fn nodes_that_lead_to_no_output_are_not_converted() {
    // An upscaler feeding only a VAE encode nobody uses never runs in ComfyUI.
    let wf = API_TXT2IMG.replace(
        "\"9\":",
        "\"20\": {\"class_type\": \"UpscaleModelLoader\", \"inputs\": {\"model_name\": \"x.pth\"}},\n  \"21\": {\"class_type\": \"ImageUpscaleWithModel\", \"inputs\": {\"upscale_model\": [\"20\", 0], \"image\": [\"8\", 0]}},\n  \"22\": {\"class_type\": \"VAEEncode\", \"inputs\": {\"pixels\": [\"21\", 0], \"vae\": [\"4\", 2]}},\n  \"9\":",
    );
    let g = import(&wf, "x.json").unwrap();
    assert!(
        !g.yaml.contains("node 22") && !g.yaml.contains("node 21"),
        "{}",
        g.yaml
    );
    // Unconsumed, the upscaler may be an output (a custom saver, say): then it is listed, with
    // the loader it needs.
    let wf = wf.replace(
        "\"22\": {\"class_type\": \"VAEEncode\"",
        "\"22\": {\"class_type\": \"UpscaleSaver\"",
    );
    let text = import(&wf, "x.json").unwrap_err().to_string();
    assert!(text.contains("node 20 (UpscaleModelLoader)"), "{text}");
    assert!(text.contains("node 21 (ImageUpscaleWithModel)"), "{text}");
    assert!(text.contains("node 22 (UpscaleSaver)"), "{text}");
}

/// A UI-format workflow as the editor saves it: positional widgets with the seed's
/// `control_after_generate`, a reroute, a primitive node driving the steps, CLIP skip, a
/// LoRA, a ControlNet on both prompts, a muted node, a note and a group.
const UI: &str = r#"{
 "last_node_id": 20, "version": 0.4,
 "groups": [{"title": "Prompts", "bounding": [0, 0, 10, 10]}],
 "nodes": [
  {"id": 4, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
   "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": [2]}, {"name": "VAE", "type": "VAE", "links": [8]}],
   "widgets_values": ["SD1.5\\dreamshaper_8.safetensors"]},
  {"id": 10, "type": "LoraLoader", "mode": 0,
   "inputs": [{"name": "model", "type": "MODEL", "link": 1}, {"name": "clip", "type": "CLIP", "link": 2}],
   "outputs": [{"name": "MODEL", "type": "MODEL", "links": [3]}, {"name": "CLIP", "type": "CLIP", "links": [4]}],
   "widgets_values": ["ring.safetensors", 0.8, 0.6]},
  {"id": 11, "type": "CLIPSetLastLayer", "mode": 0,
   "inputs": [{"name": "clip", "type": "CLIP", "link": 4}],
   "outputs": [{"name": "CLIP", "type": "CLIP", "links": [5, 6]}], "widgets_values": [-2]},
  {"id": 6, "type": "CLIPTextEncode", "mode": 0, "title": "Positive",
   "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
   "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [9]}], "widgets_values": ["a red ring"]},
  {"id": 7, "type": "CLIPTextEncode", "mode": 0,
   "inputs": [{"name": "clip", "type": "CLIP", "link": 6}],
   "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [10]}], "widgets_values": [""]},
  {"id": 12, "type": "ControlNetLoader", "mode": 0, "inputs": [],
   "outputs": [{"name": "CONTROL_NET", "type": "CONTROL_NET", "links": [11]}], "widgets_values": ["canny.safetensors"]},
  {"id": 13, "type": "LoadImage", "mode": 0, "inputs": [],
   "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [12]}, {"name": "MASK", "type": "MASK", "links": null}],
   "widgets_values": ["edges.png", "image"]},
  {"id": 14, "type": "ControlNetApplyAdvanced", "mode": 0,
   "inputs": [{"name": "positive", "type": "CONDITIONING", "link": 9}, {"name": "negative", "type": "CONDITIONING", "link": 10},
              {"name": "control_net", "type": "CONTROL_NET", "link": 11}, {"name": "image", "type": "IMAGE", "link": 12}],
   "outputs": [{"name": "positive", "type": "CONDITIONING", "links": [13]}, {"name": "negative", "type": "CONDITIONING", "links": [14]}],
   "widgets_values": [0.9, 0.0, 0.8]},
  {"id": 5, "type": "EmptyLatentImage", "mode": 0, "inputs": [],
   "outputs": [{"name": "LATENT", "type": "LATENT", "links": [15]}], "widgets_values": [512, 768, 1]},
  {"id": 15, "type": "PrimitiveNode", "mode": 0, "inputs": [],
   "outputs": [{"name": "INT", "type": "INT", "links": [16], "widget": {"name": "steps"}}], "widgets_values": [12, "fixed"]},
  {"id": 16, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 3}],
   "outputs": [{"name": "", "type": "MODEL", "links": [17]}]},
  {"id": 3, "type": "KSampler", "mode": 0,
   "inputs": [{"name": "model", "type": "MODEL", "link": 17}, {"name": "positive", "type": "CONDITIONING", "link": 13},
              {"name": "negative", "type": "CONDITIONING", "link": 14}, {"name": "latent_image", "type": "LATENT", "link": 15},
              {"name": "steps", "type": "INT", "link": 16, "widget": {"name": "steps"}}],
   "outputs": [{"name": "LATENT", "type": "LATENT", "links": [18]}],
   "widgets_values": [156680208700286, "randomize", 20, 7, "dpmpp_2m", "karras", 1]},
  {"id": 8, "type": "VAEDecode", "mode": 0,
   "inputs": [{"name": "samples", "type": "LATENT", "link": 18}, {"name": "vae", "type": "VAE", "link": 8}],
   "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [19, 20]}]},
  {"id": 9, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 19}],
   "outputs": [], "widgets_values": ["%date%/ComfyUI"]},
  {"id": 17, "type": "ImageUpscaleWithModel", "mode": 2, "inputs": [{"name": "image", "type": "IMAGE", "link": 20}], "outputs": []},
  {"id": 18, "type": "MarkdownNote", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["Set the **prompt** here."]}
 ],
 "links": [[1,4,0,10,0,"MODEL"],[2,4,1,10,1,"CLIP"],[3,10,0,16,0,"MODEL"],[4,10,1,11,0,"CLIP"],[5,11,0,6,0,"CLIP"],
           [6,11,0,7,0,"CLIP"],[8,4,2,8,1,"VAE"],[9,6,0,14,0,"CONDITIONING"],[10,7,0,14,1,"CONDITIONING"],
           [11,12,0,14,2,"CONTROL_NET"],[12,13,0,14,3,"IMAGE"],[13,14,0,3,1,"CONDITIONING"],[14,14,1,3,2,"CONDITIONING"],
           [15,5,0,3,3,"LATENT"],[16,15,0,3,4,"INT"],[17,16,0,3,0,"MODEL"],[18,3,0,8,0,"LATENT"],[19,8,0,9,0,"IMAGE"],[20,8,0,17,0,"IMAGE"]]
}"#;

#[test]
fn ui_workflow_resolves_reroutes_primitives_clip_skip_and_controlnets() {
    let g = import(UI, "ui.json").unwrap();
    let y = &g.yaml;
    assert!(
        y.contains("checkpoint: {type: path, default: \"SD1.5/dreamshaper_8.safetensors\""),
        "{y}"
    );
    // The primitive's 12 wins over the widget's stale 20.
    assert!(y.contains("  steps: {type: int, default: 12"), "{y}");
    assert!(
        y.contains("  seed: {type: seed, default: 156680208700286"),
        "{y}"
    );
    // CLIPSetLastLayer -2 = skip one layer, on both prompts, through the LoRA'd CLIP.
    assert!(y.contains("type: sd.text_encode\n    inputs: {clip: lora_10.clip}\n    params: {text: $prompt, clip_skip: 1}"), "{y}");
    assert!(y.contains("params: {text: $negative, clip_skip: 1}"), "{y}");
    // The ControlNet wraps the (rerouted) LoRA model once, for both prompts.
    assert_eq!(y.matches("type: sd.apply_controlnet").count(), 1, "{y}");
    assert!(y.contains("inputs: {model: lora_10.model, controlnet: controlnet_12.controlnet, image: image_13.image}\n    params: {strength: 0.9, start: 0.0, end: 0.8, fit: \"resize\"}"), "{y}");
    assert!(
        y.contains("inputs: {model: control_14.model, positive: positive_6.conditioning"),
        "{y}"
    );
    assert!(y.contains("params: {kind: \"dpmpp_2m\", steps: $steps, cfg: $cfg, seed: $seed, strength: 1, karras: true}"), "{y}");
    assert!(
        y.contains("# ComfyUI node 6 (CLIPTextEncode): Positive"),
        "{y}"
    );
    assert!(
        y.contains("# Set the **prompt** here.") && y.contains("# group: Prompts"),
        "{y}"
    );
    // The muted upscaler is not there; `%date%` is dropped with a note.
    assert!(!y.contains("ImageUpscaleWithModel\n"), "{y}");
    assert!(y.contains("filename: \"ComfyUI.png\""), "{y}");
    let notes: Vec<String> = g.report.notes.iter().map(|n| n.to_string()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("node 3 (KSampler): control_after_generate `randomize`")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("%tokens%")), "{notes:?}");
}

#[test]
fn a_controlnet_on_the_positive_prompt_only_is_noted() {
    let wf = r#"{
      "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m"}},
      "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
      "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
      "4": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "c"}},
      "5": {"class_type": "LoadImage", "inputs": {"image": "e.png"}},
      "6": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["2", 0], "control_net": ["4", 0], "image": ["5", 0], "strength": 1.0}},
      "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
      "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["6", 0], "negative": ["3", 0], "latent_image": ["7", 0],
            "seed": 1, "steps": 2, "cfg": 7, "sampler_name": "euler_ancestral", "scheduler": "karras", "denoise": 1}},
      "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
      "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    }"#;
    let g = import(wf, "p.json").unwrap();
    assert!(g.yaml.contains("kind: \"euler_a\""), "{}", g.yaml);
    assert!(g
        .report
        .notes
        .iter()
        .any(|n| n.message.contains("only the positive prompt")));
}

#[test]
fn inpainting_carries_the_mask_into_the_sampler_and_on() {
    let wf = r#"{
      "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m"}},
      "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
      "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
      "4": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
      "5": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["4", 0], "vae": ["1", 2], "mask": ["4", 1], "grow_mask_by": 6}},
      "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": 1, "steps": 2, "cfg": 7, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1}},
      "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
      "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "inpaint"}}
    }"#;
    let g = import(wf, "i.json").unwrap();
    assert!(
        g.yaml
            .contains("latent: encode_5.latent, mask: image_4.mask}"),
        "{}",
        g.yaml
    );
    assert!(g.yaml.contains("spacing: \"leading\""), "{}", g.yaml);
    assert!(g
        .report
        .notes
        .iter()
        .any(|n| n.message.contains("grows the mask by 6 pixels")));
}

#[test]
fn garbage_is_refused_plainly() {
    assert!(matches!(import("{", "x"), Err(ImportError::Json(_))));
    let e = import(r#"{"1": {"inputs": {}}}"#, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no `class_type`"), "{e}");
    let e = import("[]", "x").unwrap_err().to_string();
    assert!(e.contains("JSON object"), "{e}");
    let e = import("{}", "x").unwrap_err().to_string();
    assert!(e.contains("no output node"), "{e}");
}
