//! ComfyUI nodes to LatentFlow nodes.
//!
//! ComfyUI and LatentFlow cut the pipeline at different places, so the conversion works on
//! *values* rather than node by node: a ComfyUI output becomes a [`Val`] that knows which
//! LatentFlow port carries it and what ComfyUI attached to it. CLIP skip travels with the CLIP
//! value into every text encode; ControlNets travel with the conditioning and wrap the model
//! at the sampler that consumes it (LatentFlow's ControlNet wraps the denoiser); a noise mask
//! travels with the latent into the sampler's `mask` input, as ComfyUI's latent dict carries
//! `noise_mask`.
//!
//! Only nodes that lead to an output run in ComfyUI, so only those are converted. A node that
//! cannot be mapped is reported with its id and class, and nothing is written.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value as Json;

use super::classes;
use super::workflow::{Input, Node, Workflow};
use super::yaml::{Graph, GraphInput, GraphNode, Param};
use super::{Issue, Report};

/// A LatentFlow output port: `node.port`.
#[derive(Debug, Clone, PartialEq)]
struct Port(String);

impl Port {
    fn of(node: &str, port: &str) -> Self {
        Port(format!("{node}.{port}"))
    }
}

/// A ControlNet applied to a conditioning (ComfyUI) — applied to the model at the sampler.
#[derive(Debug, Clone, PartialEq)]
struct Control {
    /// The node that applied it (identity: the same application on positive and negative is
    /// one ControlNet wrap).
    applied_by: String,
    controlnet: Port,
    image: Port,
    strength: Json,
    start: Json,
    end: Json,
}

/// What one ComfyUI output carries.
#[derive(Debug, Clone)]
enum Val {
    Model(Port),
    Clip {
        port: Port,
        skip: i64,
    },
    Vae(Port),
    Cond {
        port: Port,
        controls: Vec<Control>,
    },
    Latent {
        port: Port,
        mask: Option<Port>,
    },
    Image(Port),
    Mask(Port),
    ControlNet(Port),
    /// The output of an output node (nothing to consume).
    Done,
    /// A constant from a primitive node.
    Const(Json),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Model(_) => "MODEL",
            Val::Clip { .. } => "CLIP",
            Val::Vae(_) => "VAE",
            Val::Cond { .. } => "CONDITIONING",
            Val::Latent { .. } => "LATENT",
            Val::Image(_) => "IMAGE",
            Val::Mask(_) => "MASK",
            Val::ControlNet(_) => "CONTROL_NET",
            Val::Done => "nothing",
            Val::Const(_) => "a constant",
        }
    }
}

/// The message for a class the converter does not know.
pub const NO_EQUIVALENT: &str = "no LatentFlow equivalent";

/// A failure already reported.
struct Reported;

type R<T> = Result<T, Reported>;

pub(super) struct Converter<'a> {
    wf: &'a Workflow,
    graph: Graph,
    report: Report,
    done: HashMap<String, Option<Vec<Val>>>,
    visiting: HashSet<String>,
    ids: HashSet<String>,
    roles: HashMap<String, &'static str>,
    save_prefixes: HashMap<String, usize>,
}

impl<'a> Converter<'a> {
    pub(super) fn new(wf: &'a Workflow) -> Self {
        let mut c = Converter {
            wf,
            graph: Graph::default(),
            report: Report::default(),
            done: HashMap::new(),
            visiting: HashSet::new(),
            ids: HashSet::new(),
            roles: HashMap::new(),
            save_prefixes: HashMap::new(),
        };
        c.find_roles();
        c
    }

    /// Converts everything that leads to an output.
    pub(super) fn run(mut self) -> (Graph, Report) {
        let mut consumed = HashSet::new();
        for n in self.wf.nodes.values() {
            for (_, i) in &n.inputs {
                if let Input::Link { node, .. } = i {
                    consumed.insert(node.clone());
                }
            }
        }
        let roots: Vec<String> = self
            .wf
            .nodes
            .values()
            .filter(|n| {
                classes::is_output(&n.class)
                    || (classes::widgets(&n.class).is_none() && !consumed.contains(&n.id))
            })
            .map(|n| n.id.clone())
            .collect();
        if roots.is_empty() {
            self.report.unmapped.push(Issue {
                node: String::new(),
                class: String::new(),
                message: "the workflow has no output node (SaveImage or PreviewImage): ComfyUI would run nothing".into(),
            });
        }
        // Every class without an equivalent among the nodes that run, listed up front, so the
        // report is complete even where one blocks the nodes after it.
        for id in self.live(&roots) {
            let Some(node) = self.wf.node(&id) else {
                continue;
            };
            if classes::widgets(&node.class).is_none() {
                let message = self.unknown_message(&node.class);
                self.unmapped(node, message);
            }
        }
        for id in roots {
            let _ = self.convert(&id);
        }
        (self.graph, self.report)
    }

    /// The nodes `roots` depend on, with them, in id order.
    fn live(&self, roots: &[String]) -> Vec<String> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack: Vec<String> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(n) = self.wf.node(&id) {
                for (_, i) in &n.inputs {
                    if let Input::Link { node, .. } = i {
                        stack.push(node.clone());
                    }
                }
            }
        }
        self.wf
            .nodes
            .values()
            .filter(|n| seen.contains(&n.id))
            .map(|n| n.id.clone())
            .collect()
    }

    fn unknown_message(&self, class: &str) -> String {
        match self.wf.subgraphs.get(class) {
            Some(name) => format!("a subgraph (`{name}`); subgraphs are not expanded"),
            None => NO_EQUIVALENT.to_string(),
        }
    }

    /// Names the text encodes that feed a sampler's positive or negative input.
    fn find_roles(&mut self) {
        for n in self.wf.nodes.values() {
            if !matches!(n.class.as_str(), "KSampler" | "KSamplerAdvanced") {
                continue;
            }
            for (input, role) in [("positive", "positive"), ("negative", "negative")] {
                let mut at = n.input(input).cloned();
                for _ in 0..64 {
                    let Some(Input::Link { node, slot }) = at else {
                        break;
                    };
                    let Some(src) = self.wf.node(&node) else {
                        break;
                    };
                    match src.class.as_str() {
                        "CLIPTextEncode" => {
                            self.roles.entry(node.clone()).or_insert(role);
                            break;
                        }
                        "ControlNetApply" => at = src.input("conditioning").cloned(),
                        "ControlNetApplyAdvanced" => {
                            at = src
                                .input(if slot == 0 { "positive" } else { "negative" })
                                .cloned()
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    fn unmapped(&mut self, node: &Node, message: impl Into<String>) -> Reported {
        self.report.unmapped.push(Issue {
            node: node.id.clone(),
            class: node.class.clone(),
            message: message.into(),
        });
        Reported
    }

    fn note(&mut self, node: &Node, message: impl Into<String>) {
        self.report.notes.push(Issue {
            node: node.id.clone(),
            class: node.class.clone(),
            message: message.into(),
        });
    }

    fn convert(&mut self, id: &str) -> R<Vec<Val>> {
        if let Some(done) = self.done.get(id) {
            return done.clone().ok_or(Reported);
        }
        let Some(node) = self.wf.node(id) else {
            return Err(Reported);
        };
        if !self.visiting.insert(id.to_string()) {
            return Err(self.unmapped(node, "the node is part of a cycle"));
        }
        let result = self.convert_node(node);
        self.visiting.remove(id);
        self.done
            .insert(id.to_string(), result.as_ref().ok().cloned());
        result
    }

    /// The value on `node`'s input `name`.
    fn link(&mut self, node: &Node, name: &str) -> R<Val> {
        match node.input(name) {
            Some(Input::Link { node: src, slot }) => {
                let (src, slot) = (src.clone(), *slot);
                let Some(src_node) = self.wf.node(&src) else {
                    return Err(self.unmapped(
                        node,
                        format!("input `{name}` comes from node {src}, which is not in the workflow"),
                    ));
                };
                let class = src_node.class.clone();
                let vals = self.convert(&src)?;
                match vals.get(slot) {
                    Some(v) => Ok(v.clone()),
                    None => Err(self.unmapped(
                        node,
                        format!("input `{name}` takes output {slot} of node {src} ({class}), which has no such output"),
                    )),
                }
            }
            Some(Input::Dropped { node: src }) => Err(self.unmapped(
                node,
                format!("input `{name}` comes from node {src}, which is muted or bypassed without a pass-through"),
            )),
            Some(Input::Value(_)) => Err(self.unmapped(
                node,
                format!("input `{name}` should be a link but holds a value"),
            )),
            None => Err(self.unmapped(node, format!("input `{name}` is not connected"))),
        }
    }

    /// A widget value (or a constant wired into the widget).
    fn widget(&mut self, node: &Node, name: &str) -> R<Json> {
        match node.input(name) {
            Some(Input::Value(v)) => Ok(v.clone()),
            Some(Input::Link { .. } | Input::Dropped { .. }) => match self.link(node, name)? {
                Val::Const(v) => Ok(v),
                other => Err(self.unmapped(
                    node,
                    format!(
                        "widget `{name}` is driven by a {} value; only constants can set it",
                        other.kind()
                    ),
                )),
            },
            None => match classes::default_widget(&node.class, name) {
                Some(v) => Ok(v),
                None => Err(self.unmapped(
                    node,
                    format!("widget `{name}` has no value in the workflow"),
                )),
            },
        }
    }

    fn widget_str(&mut self, node: &Node, name: &str) -> R<String> {
        match self.widget(node, name)? {
            Json::String(s) => Ok(s),
            other => {
                Err(self.unmapped(node, format!("widget `{name}` should be text, got {other}")))
            }
        }
    }

    fn widget_num(&mut self, node: &Node, name: &str) -> R<Json> {
        match self.widget(node, name)? {
            Json::Number(n) => Ok(Json::Number(n)),
            other => Err(self.unmapped(
                node,
                format!("widget `{name}` should be a number, got {other}"),
            )),
        }
    }

    fn widget_int(&mut self, node: &Node, name: &str) -> R<i64> {
        let v = self.widget_num(node, name)?;
        match v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        {
            Some(i) => Ok(i),
            None => Err(self.unmapped(
                node,
                format!("widget `{name}` should be a whole number, got {v}"),
            )),
        }
    }

    fn take_kind<T>(
        &mut self,
        node: &Node,
        name: &str,
        v: Val,
        pick: impl Fn(Val) -> Option<T>,
        want: &str,
    ) -> R<T> {
        let kind = v.kind();
        match pick(v) {
            Some(t) => Ok(t),
            None => Err(self.unmapped(
                node,
                format!("input `{name}` should carry {want}, got {kind}"),
            )),
        }
    }

    fn port_of(&mut self, node: &Node, name: &str, want: &'static str) -> R<Port> {
        let v = self.link(node, name)?;
        self.take_kind(
            node,
            name,
            v,
            |v| match (v, want) {
                (Val::Model(p), "MODEL")
                | (Val::Vae(p), "VAE")
                | (Val::Image(p), "IMAGE")
                | (Val::Mask(p), "MASK")
                | (Val::ControlNet(p), "CONTROL_NET") => Some(p),
                _ => None,
            },
            want,
        )
    }

    fn clip(&mut self, node: &Node, name: &str) -> R<(Port, i64)> {
        let v = self.link(node, name)?;
        self.take_kind(
            node,
            name,
            v,
            |v| match v {
                Val::Clip { port, skip } => Some((port, skip)),
                _ => None,
            },
            "CLIP",
        )
    }

    fn cond(&mut self, node: &Node, name: &str) -> R<(Port, Vec<Control>)> {
        let v = self.link(node, name)?;
        self.take_kind(
            node,
            name,
            v,
            |v| match v {
                Val::Cond { port, controls } => Some((port, controls)),
                _ => None,
            },
            "CONDITIONING",
        )
    }

    fn latent(&mut self, node: &Node, name: &str) -> R<(Port, Option<Port>)> {
        let v = self.link(node, name)?;
        self.take_kind(
            node,
            name,
            v,
            |v| match v {
                Val::Latent { port, mask } => Some((port, mask)),
                _ => None,
            },
            "LATENT",
        )
    }

    /// A fresh node id: `base_<comfy id>`.
    fn id_for(&mut self, node: &Node, base: &str) -> String {
        let clean: String = node
            .id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut id = format!("{base}_{clean}");
        let mut k = 2;
        while !self.ids.insert(id.clone()) {
            id = format!("{base}_{clean}_{k}");
            k += 1;
        }
        id
    }

    /// Adds a graph input named `name` (or `name_<id>` when taken).
    fn hoist(
        &mut self,
        node: &Node,
        name: &str,
        ty: &'static str,
        default: Json,
        doc: &str,
    ) -> Param {
        let taken = |n: &str, g: &Graph| g.inputs.iter().any(|i| i.name == n);
        let mut var = name.to_string();
        if taken(&var, &self.graph) {
            let clean: String = node
                .id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            var = format!("{name}_{clean}");
            let mut k = 2;
            while taken(&var, &self.graph) {
                var = format!("{name}_{clean}_{k}");
                k += 1;
            }
        }
        self.graph.inputs.push(GraphInput {
            name: var.clone(),
            ty,
            default,
            doc: format!("{doc} (ComfyUI node {}, {})", node.id, node.class),
        });
        Param::Var(var)
    }

    fn emit(
        &mut self,
        node: &Node,
        base: &str,
        ty: &'static str,
        inputs: Vec<(&'static str, Port)>,
        params: Vec<(&'static str, Param)>,
    ) -> String {
        let id = self.id_for(node, base);
        let mut comment = format!("ComfyUI node {} ({})", node.id, node.class);
        if let Some(t) = &node.title {
            comment.push_str(&format!(": {t}"));
        }
        // A literal string starting with `$` would read as a variable: route it through an input.
        let params = params
            .into_iter()
            .map(|(k, v)| match v {
                Param::Lit(Json::String(s)) if s.starts_with('$') => (
                    k,
                    self.hoist(
                        node,
                        k,
                        "string",
                        Json::from(s),
                        "a value starting with `$`",
                    ),
                ),
                other => (k, other),
            })
            .collect();
        self.graph.nodes.push(GraphNode {
            id: id.clone(),
            ty,
            comment,
            origin: node.id.clone(),
            inputs: inputs.into_iter().map(|(k, p)| (k, p.0)).collect(),
            params,
        });
        id
    }

    fn convert_node(&mut self, node: &Node) -> R<Vec<Val>> {
        let lit = Param::Lit;
        match node.class.as_str() {
            "CheckpointLoaderSimple" => {
                let name = self.model_name(node, "ckpt_name")?;
                let p = self.hoist(
                    node,
                    "checkpoint",
                    "path",
                    name,
                    "checkpoint: a name in the model folders, a Hugging Face repo id, or a path",
                );
                let id = self.emit(
                    node,
                    "checkpoint",
                    "sd.load_checkpoint",
                    vec![],
                    vec![("path", p)],
                );
                Ok(vec![
                    Val::Model(Port::of(&id, "model")),
                    Val::Clip {
                        port: Port::of(&id, "clip"),
                        skip: 0,
                    },
                    Val::Vae(Port::of(&id, "vae")),
                ])
            }
            "VAELoader" => {
                let name = self.model_name(node, "vae_name")?;
                let p = self.hoist(
                    node,
                    "vae",
                    "path",
                    name,
                    "VAE: a name in the model folders, or a path",
                );
                let id = self.emit(node, "vae", "sd.load_vae", vec![], vec![("path", p)]);
                Ok(vec![Val::Vae(Port::of(&id, "vae"))])
            }
            "ControlNetLoader" => {
                let name = self.model_name(node, "control_net_name")?;
                let p = self.hoist(
                    node,
                    "controlnet",
                    "path",
                    name,
                    "ControlNet: a name in the model folders, or a path",
                );
                let id = self.emit(
                    node,
                    "controlnet",
                    "sd.load_controlnet",
                    vec![],
                    vec![("path", p)],
                );
                Ok(vec![Val::ControlNet(Port::of(&id, "controlnet"))])
            }
            "LoraLoader" => {
                let model = self.port_of(node, "model", "MODEL")?;
                let (clip, skip) = self.clip(node, "clip")?;
                let name = self.model_name(node, "lora_name")?;
                let sm = self.widget_num(node, "strength_model")?;
                let sc = self.widget_num(node, "strength_clip")?;
                let p = self.hoist(
                    node,
                    "lora",
                    "path",
                    name,
                    "LoRA: a name in the model folders, or a path",
                );
                let id = self.emit(
                    node,
                    "lora",
                    "sd.load_lora",
                    vec![("model", model), ("clip", clip)],
                    vec![
                        ("path", p),
                        ("strength_model", lit(sm)),
                        ("strength_clip", lit(sc)),
                    ],
                );
                Ok(vec![
                    Val::Model(Port::of(&id, "model")),
                    Val::Clip {
                        port: Port::of(&id, "clip"),
                        skip,
                    },
                ])
            }
            "CLIPSetLastLayer" => {
                let (clip, _) = self.clip(node, "clip")?;
                let stop = self.widget_int(node, "stop_at_clip_layer")?;
                if stop >= 0 {
                    return Err(self.unmapped(node, format!("stop_at_clip_layer {stop}: only negative layers (-1 = last) are meaningful")));
                }
                Ok(vec![Val::Clip {
                    port: clip,
                    skip: -stop - 1,
                }])
            }
            "CLIPTextEncode" => {
                let (clip, skip) = self.clip(node, "clip")?;
                let text = self.widget(node, "text")?;
                let Json::String(text) = text else {
                    return Err(self.unmapped(node, "widget `text` should be text"));
                };
                if text.contains("embedding:") {
                    self.note(node, "textual-inversion embeddings (`embedding:NAME`) are not loaded: the words are encoded as text");
                }
                let role = self.roles.get(&node.id).copied();
                let (base, var) = match role {
                    Some("positive") => ("positive", "prompt"),
                    Some("negative") => ("negative", "negative"),
                    _ => ("text", "text"),
                };
                let p = self.hoist(node, var, "string", Json::from(text), "prompt text");
                let mut params = vec![("text", p)];
                if skip > 0 {
                    params.push(("clip_skip", lit(Json::from(skip))));
                }
                let id = self.emit(node, base, "sd.text_encode", vec![("clip", clip)], params);
                Ok(vec![Val::Cond {
                    port: Port::of(&id, "conditioning"),
                    controls: vec![],
                }])
            }
            "ControlNetApply" | "ControlNetApplyAdvanced" => self.control(node),
            "EmptyLatentImage" => {
                let w = self.widget_int(node, "width")?;
                let h = self.widget_int(node, "height")?;
                let b = self.widget_int(node, "batch_size")?;
                let w = self.hoist(node, "width", "int", Json::from(w), "image width in pixels");
                let h = self.hoist(
                    node,
                    "height",
                    "int",
                    Json::from(h),
                    "image height in pixels",
                );
                let b = self.hoist(node, "batch", "int", Json::from(b), "images per run");
                let id = self.emit(
                    node,
                    "latent",
                    "core.empty_latent",
                    vec![],
                    vec![
                        ("width", w),
                        ("height", h),
                        ("batch", b),
                        ("channels", lit(Json::from(4))),
                        ("downscale", lit(Json::from(8))),
                    ],
                );
                Ok(vec![Val::Latent {
                    port: Port::of(&id, "latent"),
                    mask: None,
                }])
            }
            "VAEEncode" | "VAEEncodeForInpaint" => {
                let image = self.port_of(node, "pixels", "IMAGE")?;
                let vae = self.port_of(node, "vae", "VAE")?;
                let mask = if node.class == "VAEEncodeForInpaint" {
                    let m = self.port_of(node, "mask", "MASK")?;
                    let grow = self.widget_int(node, "grow_mask_by").unwrap_or(0);
                    self.note(node, format!(
                        "ComfyUI fills the masked pixels with gray before encoding{}; LatentFlow encodes the image as it is and the sampler keeps the unmasked region at every step",
                        if grow > 0 { format!(" and grows the mask by {grow} pixels") } else { String::new() }
                    ));
                    Some(m)
                } else {
                    None
                };
                let id = self.emit(
                    node,
                    "encode",
                    "sd.vae_encode",
                    vec![("vae", vae), ("image", image)],
                    vec![],
                );
                Ok(vec![Val::Latent {
                    port: Port::of(&id, "latent"),
                    mask,
                }])
            }
            "SetLatentNoiseMask" => {
                let (latent, _) = self.latent(node, "samples")?;
                let mask = self.port_of(node, "mask", "MASK")?;
                Ok(vec![Val::Latent {
                    port: latent,
                    mask: Some(mask),
                }])
            }
            "KSampler" | "KSamplerAdvanced" => self.sampler(node),
            "VAEDecode" => {
                let (latent, _) = self.latent(node, "samples")?;
                let vae = self.port_of(node, "vae", "VAE")?;
                let id = self.emit(
                    node,
                    "decode",
                    "sd.vae_decode",
                    vec![("vae", vae), ("latent", latent)],
                    vec![],
                );
                Ok(vec![Val::Image(Port::of(&id, "image"))])
            }
            "LoadImage" => {
                let name = self.widget_str(node, "image")?;
                let p = self.hoist(node, "image", "path", Json::from(name), "input image");
                let id = self.emit(node, "image", "core.load_image", vec![], vec![("path", p)]);
                Ok(vec![
                    Val::Image(Port::of(&id, "image")),
                    Val::Mask(Port::of(&id, "mask")),
                ])
            }
            "LoadImageMask" => {
                let name = self.widget_str(node, "image")?;
                let channel = self.widget_str(node, "channel")?;
                let p = self.hoist(node, "mask_image", "path", Json::from(name), "mask image");
                let id = self.emit(
                    node,
                    "mask_image",
                    "core.load_image",
                    vec![],
                    vec![("path", p)],
                );
                let ch = match channel.as_str() {
                    // ComfyUI inverts alpha, as core.load_image's mask output does.
                    "alpha" => return Ok(vec![Val::Mask(Port::of(&id, "mask"))]),
                    "red" | "green" | "blue" => channel,
                    other => return Err(self.unmapped(node, format!("channel `{other}`"))),
                };
                let m = self.emit(
                    node,
                    "mask",
                    "core.image_to_mask",
                    vec![("image", Port::of(&id, "image"))],
                    vec![("channel", lit(Json::from(ch)))],
                );
                Ok(vec![Val::Mask(Port::of(&m, "mask"))])
            }
            "InvertMask" => {
                let mask = self.port_of(node, "mask", "MASK")?;
                let id = self.emit(
                    node,
                    "invert",
                    "core.invert_mask",
                    vec![("mask", mask)],
                    vec![],
                );
                Ok(vec![Val::Mask(Port::of(&id, "mask"))])
            }
            "SaveImage" => {
                let image = self.port_of(node, "images", "IMAGE")?;
                let prefix = self.widget_str(node, "filename_prefix")?;
                let file = self.file_name(node, &prefix);
                self.emit(
                    node,
                    "save",
                    "core.save_image",
                    vec![("image", image)],
                    vec![("filename", lit(Json::from(file)))],
                );
                Ok(vec![Val::Done])
            }
            "PreviewImage" => {
                let image = self.port_of(node, "images", "IMAGE")?;
                self.emit(
                    node,
                    "preview",
                    "core.preview_image",
                    vec![("image", image)],
                    vec![],
                );
                Ok(vec![Val::Done])
            }
            "LatentUpscale" | "LatentUpscaleBy" => {
                let (latent, mask) = self.latent(node, "samples")?;
                let method = self.widget_str(node, "upscale_method")?;
                let method = match method.as_str() {
                    "bilinear" => "bilinear",
                    "nearest-exact" => {
                        self.note(node, "nearest-exact is done as nearest (the source pixel chosen by floor, not by centre)");
                        "nearest"
                    }
                    other => {
                        self.note(
                            node,
                            format!("upscale method `{other}` is done as bilinear"),
                        );
                        "bilinear"
                    }
                };
                let size = if node.class == "LatentUpscaleBy" {
                    let by = self.widget_num(node, "scale_by")?;
                    vec![("scale", Param::Lit(by))]
                } else {
                    let (w, h) = self.scale_widgets(node)?;
                    let w = self.hoist(
                        node,
                        "upscale_width",
                        "int",
                        Json::from(w),
                        "upscaled width in pixels",
                    );
                    let h = self.hoist(
                        node,
                        "upscale_height",
                        "int",
                        Json::from(h),
                        "upscaled height in pixels",
                    );
                    vec![
                        ("width", w),
                        ("height", h),
                        ("downscale", lit(Json::from(8))),
                    ]
                };
                let mut params = size;
                params.push(("method", lit(Json::from(method))));
                let id = self.emit(
                    node,
                    "upscale",
                    "core.resize_latent",
                    vec![("latent", latent)],
                    params,
                );
                Ok(vec![Val::Latent {
                    port: Port::of(&id, "latent"),
                    mask,
                }])
            }
            "ImageScale" => {
                let image = self.port_of(node, "image", "IMAGE")?;
                let (w, h) = self.scale_widgets(node)?;
                let method = self.widget_str(node, "upscale_method")?;
                let method = match method.as_str() {
                    "bilinear" | "bicubic" | "lanczos" => method,
                    "nearest-exact" => "nearest".to_string(),
                    other => {
                        self.note(
                            node,
                            format!("upscale method `{other}` is done as bilinear"),
                        );
                        "bilinear".to_string()
                    }
                };
                let w = self.hoist(
                    node,
                    "scale_width",
                    "int",
                    Json::from(w),
                    "scaled width in pixels",
                );
                let h = self.hoist(
                    node,
                    "scale_height",
                    "int",
                    Json::from(h),
                    "scaled height in pixels",
                );
                let id = self.emit(
                    node,
                    "scale",
                    "core.resize_image",
                    vec![("image", image)],
                    vec![
                        ("width", w),
                        ("height", h),
                        ("method", lit(Json::from(method))),
                    ],
                );
                Ok(vec![Val::Image(Port::of(&id, "image"))])
            }
            "PrimitiveInt"
            | "PrimitiveFloat"
            | "PrimitiveString"
            | "PrimitiveStringMultiline"
            | "PrimitiveBoolean" => {
                let v = self.widget(node, "value")?;
                Ok(vec![Val::Const(v)])
            }
            // Reported by the pre-pass in `run`.
            _ => Err(Reported),
        }
    }

    /// A model file name widget, with Windows separators made portable.
    fn model_name(&mut self, node: &Node, widget: &str) -> R<Json> {
        let s = self.widget_str(node, widget)?;
        Ok(Json::from(s.replace('\\', "/")))
    }

    /// `filename_prefix` as a file name in the output folder: `%date%`-style tokens are
    /// dropped (with a note), and prefixes used twice get the node id.
    fn file_name(&mut self, node: &Node, prefix: &str) -> String {
        let mut clean = String::new();
        let mut in_token = false;
        for c in prefix.chars() {
            match c {
                '%' => in_token = !in_token,
                _ if in_token => {}
                c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') => {
                    clean.push(c)
                }
                _ => clean.push('_'),
            }
        }
        if clean.len() != prefix.len() {
            self.note(node, format!("filename_prefix `{prefix}` becomes `{clean}` (ComfyUI's %tokens% are not expanded)"));
        }
        let clean: Vec<&str> = clean
            .split('/')
            .filter(|p| !p.is_empty() && *p != "." && *p != "..")
            .collect();
        let mut stem = if clean.is_empty() {
            "ComfyUI".to_string()
        } else {
            clean.join("/")
        };
        let n = self.save_prefixes.entry(stem.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            stem = format!("{stem}_{}", node.id.replace(':', "_"));
        }
        format!("{stem}.png")
    }

    fn scale_widgets(&mut self, node: &Node) -> R<(i64, i64)> {
        let w = self.widget_int(node, "width")?;
        let h = self.widget_int(node, "height")?;
        if w <= 0 || h <= 0 {
            return Err(self.unmapped(node, "a width or height of 0 (keep the aspect ratio) needs the input's size, which is known only when it runs"));
        }
        if let Ok(crop) = self.widget_str(node, "crop") {
            if crop != "disabled" {
                self.note(
                    node,
                    format!("crop `{crop}` is not done: the input is stretched to the new size"),
                );
            }
        }
        Ok((w, h))
    }

    fn control(&mut self, node: &Node) -> R<Vec<Val>> {
        let advanced = node.class == "ControlNetApplyAdvanced";
        let controlnet = self.port_of(node, "control_net", "CONTROL_NET")?;
        let image = self.port_of(node, "image", "IMAGE")?;
        let strength = self.widget_num(node, "strength")?;
        let (start, end) = if advanced {
            (
                self.widget_num(node, "start_percent")?,
                self.widget_num(node, "end_percent")?,
            )
        } else {
            (Json::from(0.0), Json::from(1.0))
        };
        if start.as_f64() != Some(0.0) || end.as_f64() != Some(1.0) {
            self.note(node, "start_percent/end_percent become fractions of the steps (diffusers' control_guidance_start/end); ComfyUI measures them along the sigma schedule");
        }
        let control = Control {
            applied_by: node.id.clone(),
            controlnet,
            image,
            strength,
            start,
            end,
        };
        let with = |(port, mut controls): (Port, Vec<Control>)| {
            controls.push(control.clone());
            Val::Cond { port, controls }
        };
        if advanced {
            let pos = self.cond(node, "positive")?;
            let neg = self.cond(node, "negative")?;
            Ok(vec![with(pos), with(neg)])
        } else {
            let c = self.cond(node, "conditioning")?;
            Ok(vec![with(c)])
        }
    }

    fn sampler(&mut self, node: &Node) -> R<Vec<Val>> {
        let advanced = node.class == "KSamplerAdvanced";
        // Names first: the report lists them even when an input fails too.
        let sampler_name = self.widget_str(node, "sampler_name")?;
        let scheduler_name = self.widget_str(node, "scheduler")?;
        let Some(s) = classes::sampler(&sampler_name) else {
            return Err(self.unmapped(
                node,
                format!(
                    "sampler `{sampler_name}` has no LatentFlow equivalent (mapped: {})",
                    classes::SAMPLERS
                ),
            ));
        };
        let Some(sch) = classes::scheduler(&scheduler_name) else {
            return Err(self.unmapped(
                node,
                format!(
                    "scheduler `{scheduler_name}` has no LatentFlow equivalent (mapped: {})",
                    classes::SCHEDULERS
                ),
            ));
        };
        let mut model = self.port_of(node, "model", "MODEL")?;
        let (pos, pos_controls) = self.cond(node, "positive")?;
        let (neg, neg_controls) = self.cond(node, "negative")?;
        let (latent, mask) = self.latent(node, "latent_image")?;
        let seed = self.widget_num(node, if advanced { "noise_seed" } else { "seed" })?;
        let steps = self.widget_int(node, "steps")?;
        let cfg = self.widget_num(node, "cfg")?;
        let denoise = if advanced {
            let add_noise = self.widget_str(node, "add_noise")?;
            let start = self.widget_int(node, "start_at_step")?;
            let end = self.widget_int(node, "end_at_step")?;
            if add_noise != "enable" || start != 0 || end < steps {
                return Err(self.unmapped(node, format!(
                    "running steps {start}..{end} of {steps} (add_noise {add_noise}) hands a partly denoised latent on; samplers.sample always runs a schedule to its end"
                )));
            }
            Json::from(1.0)
        } else {
            self.widget_num(node, "denoise")?
        };
        if let Some(n) = s.note {
            self.note(node, n);
        }
        if let Some(n) = sch.note {
            self.note(node, n);
        }
        if let Some(Input::Value(Json::String(c))) = node.input(classes::CONTROL) {
            if c != "fixed" {
                self.note(node, format!(
                    "control_after_generate `{c}`: ComfyUI changes the seed after each run; the graph keeps the seed the workflow was saved with, which reproduces that run (`--set seed=random` draws a new one)"
                ));
            }
        }
        // ControlNets attached to either prompt wrap the model, once each.
        let mut controls: Vec<Control> = Vec::new();
        for c in pos_controls.iter().chain(&neg_controls) {
            if !controls.iter().any(|k| k.applied_by == c.applied_by) {
                controls.push(c.clone());
            }
        }
        for c in &controls {
            let on_pos = pos_controls.iter().any(|k| k.applied_by == c.applied_by);
            let on_neg = neg_controls.iter().any(|k| k.applied_by == c.applied_by);
            if on_pos != on_neg {
                self.note(node, format!(
                    "the ControlNet of node {} conditions only the {} prompt in ComfyUI; LatentFlow's ControlNet wraps the model and steers both halves of the CFG batch",
                    c.applied_by,
                    if on_pos { "positive" } else { "negative" }
                ));
            }
            let Some(src) = self.wf.node(&c.applied_by) else {
                continue;
            };
            let id = self.emit(
                src,
                "control",
                "sd.apply_controlnet",
                vec![
                    ("model", model.clone()),
                    ("controlnet", c.controlnet.clone()),
                    ("image", c.image.clone()),
                ],
                vec![
                    ("strength", Param::Lit(c.strength.clone())),
                    ("start", Param::Lit(c.start.clone())),
                    ("end", Param::Lit(c.end.clone())),
                    ("fit", Param::Lit(Json::from("resize"))),
                ],
            );
            model = Port::of(&id, "model");
        }
        let seed = self.hoist(node, "seed", "seed", seed, "noise seed");
        let steps = self.hoist(node, "steps", "int", Json::from(steps), "sampling steps");
        let cfg = self.hoist(node, "cfg", "float", cfg, "classifier-free guidance scale");
        let mut inputs = vec![
            ("model", model),
            ("positive", pos),
            ("negative", neg),
            ("latent", latent),
        ];
        if let Some(m) = &mask {
            inputs.push(("mask", m.clone()));
        }
        let mut params = vec![
            ("kind", Param::Lit(Json::from(s.kind))),
            ("steps", steps),
            ("cfg", cfg),
            ("seed", seed),
            ("strength", Param::Lit(denoise)),
        ];
        if sch.karras {
            params.push(("karras", Param::Lit(Json::from(true))));
        }
        if sch.spacing != "default" {
            params.push(("spacing", Param::Lit(Json::from(sch.spacing))));
        }
        let id = self.emit(node, "sample", "samplers.sample", inputs, params);
        // ComfyUI's sampler output keeps the input's noise mask.
        Ok(vec![Val::Latent {
            port: Port::of(&id, "latent"),
            mask,
        }])
    }
}

/// Counts classes over a set of workflows' unmapped reports, most used first.
pub fn tally<'a>(issues: impl IntoIterator<Item = &'a Issue>) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in issues {
        if !i.class.is_empty() {
            *counts.entry(i.class.clone()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}
