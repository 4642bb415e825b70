//! What LatentFlow knows about ComfyUI's core classes: widget order (the UI format stores
//! widget values by position), and sampler and scheduler names.

use serde_json::Value as Json;

/// Marks the `control_after_generate` widget ComfyUI adds after a seed widget; it is a UI
/// setting, not an input, and some workflows omit it.
pub const CONTROL: &str = "control_after_generate";

/// Widget names in order, for the classes the converter maps.
pub fn widgets(class: &str) -> Option<&'static [&'static str]> {
    Some(match class {
        "CheckpointLoaderSimple" => &["ckpt_name"],
        "VAELoader" => &["vae_name"],
        "LoraLoader" => &["lora_name", "strength_model", "strength_clip"],
        "ControlNetLoader" => &["control_net_name"],
        "CLIPTextEncode" => &["text"],
        "CLIPSetLastLayer" => &["stop_at_clip_layer"],
        "KSampler" => &[
            "seed",
            CONTROL,
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "denoise",
        ],
        "KSamplerAdvanced" => &[
            "add_noise",
            "noise_seed",
            CONTROL,
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ],
        "EmptyLatentImage" => &["width", "height", "batch_size"],
        "VAEDecode" | "VAEEncode" | "SetLatentNoiseMask" | "PreviewImage" | "InvertMask" => &[],
        "VAEEncodeForInpaint" => &["grow_mask_by"],
        "LoadImage" => &["image", "upload"],
        "LoadImageMask" => &["image", "channel", "upload"],
        "SaveImage" => &["filename_prefix"],
        "ControlNetApply" => &["strength"],
        "ControlNetApplyAdvanced" => &["strength", "start_percent", "end_percent"],
        "LatentUpscale" | "ImageScale" => &["upscale_method", "width", "height", "crop"],
        "LatentUpscaleBy" => &["upscale_method", "scale_by"],
        "PrimitiveInt"
        | "PrimitiveFloat"
        | "PrimitiveString"
        | "PrimitiveStringMultiline"
        | "PrimitiveBoolean" => &["value"],
        _ => return None,
    })
}

/// The value ComfyUI gives a widget the workflow does not store (its input's default).
pub fn default_widget(class: &str, name: &str) -> Option<Json> {
    Some(match (class, name) {
        ("SaveImage", "filename_prefix") => Json::from("ComfyUI"),
        ("KSampler", "denoise") => Json::from(1.0),
        (_, "seed" | "noise_seed") => Json::from(0),
        (_, "steps") => Json::from(20),
        (_, "cfg") => Json::from(8.0),
        (_, "sampler_name") => Json::from("euler"),
        (_, "scheduler") => Json::from("normal"),
        ("KSamplerAdvanced", "add_noise") => Json::from("enable"),
        ("KSamplerAdvanced", "start_at_step") => Json::from(0),
        ("KSamplerAdvanced", "end_at_step") => Json::from(10000),
        ("EmptyLatentImage", "width" | "height") => Json::from(512),
        ("EmptyLatentImage", "batch_size") => Json::from(1),
        ("VAEEncodeForInpaint", "grow_mask_by") => Json::from(6),
        ("LoraLoader", "strength_model" | "strength_clip") => Json::from(1.0),
        ("ControlNetApply" | "ControlNetApplyAdvanced", "strength") => Json::from(1.0),
        ("ControlNetApplyAdvanced", "start_percent") => Json::from(0.0),
        ("ControlNetApplyAdvanced", "end_percent") => Json::from(1.0),
        ("CLIPSetLastLayer", "stop_at_clip_layer") => Json::from(-1),
        ("LatentUpscale" | "ImageScale", "crop") => Json::from("disabled"),
        ("LatentUpscaleBy", "scale_by") => Json::from(1.5),
        ("CLIPTextEncode", "text") => Json::from(""),
        _ => return None,
    })
}

/// Pairs widget values with names, skipping [`CONTROL`] when the workflow left it out.
pub fn name_widgets(names: &[&str], values: &[Json]) -> Vec<(String, Json)> {
    let with_control = names.contains(&CONTROL);
    let skip_control = with_control && values.len() < names.len();
    names
        .iter()
        .filter(|n| !(skip_control && **n == CONTROL))
        .zip(values)
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

/// Comment nodes: never executed, kept as comments.
pub fn is_note(class: &str) -> bool {
    matches!(class, "Note" | "MarkdownNote" | "PrimitiveNote")
}

/// ComfyUI's output nodes among the classes that may appear; with unknown classes that
/// nothing consumes, these decide what runs.
pub fn is_output(class: &str) -> bool {
    matches!(class, "SaveImage" | "PreviewImage")
}

/// How one ComfyUI sampler name maps onto `samplers.sample`'s `kind`.
pub struct SamplerMap {
    /// Our kind.
    pub kind: &'static str,
    /// Set when the match is close but not exact.
    pub note: Option<&'static str>,
}

/// Maps a ComfyUI `sampler_name`.
pub fn sampler(name: &str) -> Option<SamplerMap> {
    let exact = |kind| SamplerMap { kind, note: None };
    Some(match name {
        "euler" => exact("euler"),
        "euler_ancestral" => exact("euler_a"),
        "lms" => exact("lms"),
        "dpmpp_2m" => exact("dpmpp_2m"),
        "ddim" => exact("ddim"),
        "ddpm" => exact("ddpm"),
        "lcm" => exact("lcm"),
        "uni_pc_bh2" => exact("unipc"),
        "uni_pc" => SamplerMap {
            kind: "unipc",
            note: Some("ComfyUI's uni_pc is the bh1 variant; LatentFlow's unipc is bh2 (ComfyUI's uni_pc_bh2)"),
        },
        _ => return None,
    })
}

/// How one ComfyUI scheduler name maps onto `samplers.sample`'s `karras` and `spacing`.
pub struct SchedulerMap {
    /// Karras sigmas.
    pub karras: bool,
    /// diffusers timestep spacing.
    pub spacing: &'static str,
    /// Set when the match is close but not exact.
    pub note: Option<&'static str>,
}

/// Maps a ComfyUI `scheduler`.
pub fn scheduler(name: &str) -> Option<SchedulerMap> {
    let map = |karras, spacing, note| SchedulerMap {
        karras,
        spacing,
        note,
    };
    Some(match name {
        "normal" => map(false, "default", Some("ComfyUI's `normal` spaces sigmas evenly in time; LatentFlow uses the scheduler's own diffusers timestep spacing")),
        "simple" => map(false, "default", Some("ComfyUI's `simple` takes every n-th training sigma; LatentFlow uses the scheduler's own diffusers timestep spacing")),
        "karras" => map(true, "default", None),
        "sgm_uniform" => map(false, "trailing", None),
        "ddim_uniform" => map(false, "leading", None),
        _ => return None,
    })
}

/// The sampler names LatentFlow maps, for messages.
pub const SAMPLERS: &str =
    "euler, euler_ancestral, lms, dpmpp_2m, ddim, ddpm, lcm, uni_pc, uni_pc_bh2";
/// The scheduler names LatentFlow maps, for messages.
pub const SCHEDULERS: &str = "normal, simple, karras, sgm_uniform, ddim_uniform";
