//! Port type compatibility: unification of parameterised types across an edge.
//!
//! Dimensions and families may be type variables of the consuming node: the first edge binds
//! them, later edges must agree (a sampler's model and its conditioning are of one family).

use std::collections::HashMap;

use latentflow_plugin_api::{DType, Dim, Family, PortType};
use serde_json::{Map, Value as Json};

/// Type-variable bindings of one node (`C` → 4, `F` → `sd1`).
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    dims: HashMap<String, i64>,
    families: HashMap<String, String>,
}

impl Bindings {
    /// No bindings yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Resolves `Param` dims from `params` and bound `Var`s; unbound variables stay as they are.
fn resolve(d: &Dim, params: &Map<String, Json>, b: &Bindings) -> Dim {
    match d {
        Dim::Param(p) => params
            .get(p.as_str())
            .and_then(Json::as_i64)
            .map(Dim::Fixed)
            .unwrap_or(Dim::Any),
        Dim::Var(v) => b
            .dims
            .get(v.as_str())
            .map(|&x| Dim::Fixed(x))
            .unwrap_or_else(|| d.clone()),
        other => other.clone(),
    }
}

fn unify_dim(out: &Dim, inp: &Dim, params: &Map<String, Json>, b: &mut Bindings) -> bool {
    let inp_r = resolve(inp, params, b);
    match (out, &inp_r) {
        (Dim::Fixed(a), Dim::Fixed(c)) => a == c,
        (Dim::Fixed(a), Dim::Var(v)) => {
            b.dims.insert(v.to_string(), *a);
            true
        }
        _ => true,
    }
}

fn resolve_family(f: &Family, b: &Bindings) -> Family {
    match f {
        Family::Var(v) => b
            .families
            .get(v)
            .map(|n| Family::Named(n.clone()))
            .unwrap_or_else(|| f.clone()),
        other => other.clone(),
    }
}

fn unify_family(out: &Family, inp: &Family, b: &mut Bindings) -> bool {
    match (out, &resolve_family(inp, b)) {
        (Family::Named(a), Family::Named(c)) => a == c,
        (Family::Named(a), Family::Var(v)) => {
            b.families.insert(v.clone(), a.clone());
            true
        }
        _ => true,
    }
}

fn dtype_ok(out: Option<DType>, inp: &Option<DType>) -> bool {
    match (out, inp) {
        (Some(a), Some(b)) => a == *b,
        _ => true,
    }
}

/// Whether an output of type `out` (already resolved) may feed an input of type `inp` of a node
/// with `params`; binds the node's type variables as a side effect.
pub fn unify(out: &PortType, inp: &PortType, params: &Map<String, Json>, b: &mut Bindings) -> bool {
    use PortType as T;
    let tensor_like = |rank: i64,
                       dtype: Option<DType>,
                       want_dtype: &Option<DType>,
                       want_rank: &Dim,
                       b: &mut Bindings| {
        dtype_ok(dtype, want_dtype) && unify_dim(&Dim::Fixed(rank), want_rank, params, b)
    };
    match (out, inp) {
        (T::Any, _) | (_, T::Any) => true,
        (T::List { item: a }, T::List { item: c }) => unify(a, c, params, b),
        // One value feeds a list input as a list of one.
        (a, T::List { item: c }) => unify(a, c, params, b),
        (
            T::Tensor {
                dtype: d1,
                rank: r1,
            },
            T::Tensor { dtype, rank },
        ) => dtype_ok(*d1, dtype) && unify_dim(r1, rank, params, b),
        (T::Image, T::Tensor { dtype, rank }) => tensor_like(4, Some(DType::F32), dtype, rank, b),
        (T::Latent { .. }, T::Tensor { dtype, rank }) => tensor_like(4, None, dtype, rank, b),
        (T::Mask, T::Tensor { dtype, rank }) => tensor_like(3, Some(DType::F32), dtype, rank, b),
        (T::Conditioning { .. }, T::Tensor { dtype, rank }) => tensor_like(3, None, dtype, rank, b),
        (T::VideoLatent { .. }, T::Tensor { dtype, rank }) => tensor_like(5, None, dtype, rank, b),
        (T::Latent { channels: c1 }, T::Latent { channels: c2 })
        | (T::VideoLatent { channels: c1 }, T::VideoLatent { channels: c2 }) => {
            unify_dim(c1, c2, params, b)
        }
        (
            T::Conditioning {
                dim: d1,
                family: f1,
            },
            T::Conditioning {
                dim: d2,
                family: f2,
            },
        ) => unify_dim(d1, d2, params, b) && unify_family(f1, f2, b),
        (
            T::Handle {
                interface: i1,
                family: f1,
            },
            T::Handle {
                interface: i2,
                family: f2,
            },
        ) => i1 == i2 && unify_family(f1, f2, b),
        (T::Record { record: r1 }, T::Record { record: r2 }) => r1 == r2,
        (T::Int, T::Float) => true,
        (a, c) => {
            a.kind_name() == c.kind_name()
                && matches!(
                    a,
                    T::Bool | T::Int | T::Float | T::String | T::Image | T::Mask | T::Video
                )
        }
    }
}

/// An output type with the node's params and bindings substituted; unbound variables become `Any`.
pub fn substitute(t: &PortType, params: &Map<String, Json>, b: &Bindings) -> PortType {
    use PortType as T;
    let dim = |d: &Dim| match resolve(d, params, b) {
        Dim::Var(_) | Dim::Param(_) => Dim::Any,
        other => other,
    };
    let family = |f: &Family| match resolve_family(f, b) {
        Family::Var(_) => Family::Any,
        other => other,
    };
    match t {
        T::List { item } => T::List {
            item: Box::new(substitute(item, params, b)),
        },
        T::Tensor { dtype, rank } => T::Tensor {
            dtype: *dtype,
            rank: dim(rank),
        },
        T::Latent { channels } => T::Latent {
            channels: dim(channels),
        },
        T::VideoLatent { channels } => T::VideoLatent {
            channels: dim(channels),
        },
        T::Conditioning { dim: d, family: f } => T::Conditioning {
            dim: dim(d),
            family: family(f),
        },
        T::Handle {
            interface,
            family: f,
        } => T::Handle {
            interface: interface.clone(),
            family: family(f),
        },
        other => other.clone(),
    }
}

/// Whether a refined type `refined` (from a plugin's type inference) narrows `declared`: the
/// same kind, with named families or fixed dimensions where the declaration has variables.
pub fn narrows(refined: &PortType, declared: &PortType) -> bool {
    let mut b = Bindings::new();
    refined.kind_name() == declared.kind_name() && unify(refined, declared, &Map::new(), &mut b)
}

/// The first-party node that converts `out` into `inp`, for kinds that never connect directly.
pub fn conversion_hint(out: &PortType, inp: &PortType) -> Option<&'static str> {
    use PortType as T;
    match (out, inp) {
        (T::Latent { .. }, T::VideoLatent { .. }) => Some(
            "frame latents become a video latent through video.latent_from_batch (N·F×C×H×W → N×C×F×H×W)",
        ),
        (T::VideoLatent { .. }, T::Latent { .. }) => Some(
            "a video latent becomes frame latents through video.latent_to_batch (N×C×F×H×W → N·F×C×H×W)",
        ),
        (T::Video, T::Image) => Some("a video's frames come out of video.to_frames"),
        (T::Image, T::Video) => Some("an image batch becomes a video through video.from_frames"),
        _ => None,
    }
}

/// Whether a constant from a graph variable fits a port of type `t`.
pub fn const_fits(value: &Json, t: &PortType) -> bool {
    match t {
        PortType::Any => true,
        PortType::Bool => value.is_boolean(),
        PortType::Int => value.is_i64(),
        PortType::Float => value.is_number(),
        PortType::String => value.is_string(),
        PortType::List { item } => value
            .as_array()
            .is_some_and(|a| a.iter().all(|v| const_fits(v, item))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_params() -> Map<String, Json> {
        Map::new()
    }

    #[test]
    fn latent_channels_must_match() {
        let mut b = Bindings::new();
        let four = PortType::latent(Dim::Fixed(4));
        let sixteen = PortType::latent(Dim::Fixed(16));
        assert!(unify(&four, &four, &no_params(), &mut b));
        assert!(!unify(&sixteen, &four, &no_params(), &mut b));
        assert!(unify(
            &PortType::latent(Dim::Any),
            &four,
            &no_params(),
            &mut b
        ));
    }

    #[test]
    fn image_and_video_latents_never_mix() {
        let mut b = Bindings::new();
        let image = PortType::latent(Dim::Any);
        let video = PortType::video_latent(Dim::Any);
        assert!(!unify(&image, &video, &no_params(), &mut b));
        assert!(!unify(&video, &image, &no_params(), &mut b));
        assert!(unify(&video, &video, &no_params(), &mut b));
        assert!(!unify(
            &PortType::video_latent(Dim::Fixed(16)),
            &PortType::video_latent(Dim::Fixed(4)),
            &no_params(),
            &mut b
        ));
        // A video latent is a rank-5 tensor, an image latent a rank-4 one.
        let rank5 = PortType::tensor(None, Dim::Fixed(5));
        assert!(unify(&video, &rank5, &no_params(), &mut b));
        assert!(!unify(&image, &rank5, &no_params(), &mut b));
        // Frames are not an image batch without the conversion node.
        assert!(!unify(
            &PortType::Video,
            &PortType::Image,
            &no_params(),
            &mut b
        ));
        assert!(unify(
            &PortType::Video,
            &PortType::Video,
            &no_params(),
            &mut b
        ));
    }

    #[test]
    fn type_variables_bind_across_inputs() {
        let mut b = Bindings::new();
        let var = PortType::latent(Dim::var("C"));
        assert!(unify(
            &PortType::latent(Dim::Fixed(4)),
            &var,
            &no_params(),
            &mut b
        ));
        assert!(!unify(
            &PortType::latent(Dim::Fixed(16)),
            &var,
            &no_params(),
            &mut b
        ));
        assert_eq!(
            substitute(&var, &no_params(), &b),
            PortType::latent(Dim::Fixed(4))
        );
    }

    #[test]
    fn params_fix_dimensions() {
        let mut params = Map::new();
        params.insert("channels".into(), Json::from(16));
        let t = PortType::latent(Dim::param("channels"));
        assert_eq!(
            substitute(&t, &params, &Bindings::new()),
            PortType::latent(Dim::Fixed(16))
        );
    }

    #[test]
    fn specialised_tensors_widen_to_tensor() {
        let mut b = Bindings::new();
        let rank4 = PortType::tensor(None, Dim::Fixed(4));
        assert!(unify(&PortType::Image, &rank4, &no_params(), &mut b));
        assert!(!unify(&PortType::Mask, &rank4, &no_params(), &mut b));
        assert!(!unify(&rank4, &PortType::Image, &no_params(), &mut b));
    }

    #[test]
    fn handles_match_by_interface_and_family() {
        let mut b = Bindings::new();
        let sd1 = PortType::handle_of("Denoiser", Family::named("sd1"));
        assert!(unify(
            &sd1,
            &PortType::handle("Denoiser"),
            &no_params(),
            &mut b
        ));
        assert!(!unify(
            &sd1,
            &PortType::handle_of("Denoiser", Family::named("sdxl")),
            &no_params(),
            &mut b
        ));
        assert!(!unify(
            &sd1,
            &PortType::handle_of("Vae", Family::named("sd1")),
            &no_params(),
            &mut b
        ));
    }

    #[test]
    fn a_family_variable_ties_model_and_conditioning() {
        let mut b = Bindings::new();
        let model = PortType::handle_of("Denoiser", Family::var("F"));
        let cond = PortType::conditioning_of(Dim::Any, Family::var("F"));
        let sd1 = Family::named("sd1");
        let sdxl = Family::named("sdxl");
        assert!(unify(
            &PortType::handle_of("Denoiser", sd1.clone()),
            &model,
            &no_params(),
            &mut b
        ));
        assert!(!unify(
            &PortType::conditioning_of(Dim::Fixed(2048), sdxl),
            &cond,
            &no_params(),
            &mut b
        ));
        assert!(unify(
            &PortType::conditioning_of(Dim::Fixed(768), sd1.clone()),
            &cond,
            &no_params(),
            &mut b
        ));
        assert_eq!(
            substitute(&model, &no_params(), &b),
            PortType::handle_of("Denoiser", sd1)
        );
    }
}
