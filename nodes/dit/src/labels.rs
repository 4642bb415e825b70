//! `dit.class_labels`: class ids or names as a DiT's conditioning, and the "no class"
//! conditioning that classifier-free guidance pairs with it.

use latentflow_plugin_api::sdk::prelude::*;

use crate::FAMILY;

fn class_labels(ctx: &Ctx, inputs: &Inputs, p: &Params) -> Result<Vec<Value>, NodeError> {
    let labels: Vec<Value> = p
        .str("labels")?
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Value::Str(s.into()))
        .collect();
    if labels.is_empty() {
        return Err(NodeError::invalid(
            "no class labels: give ids or names separated by `;` (e.g. `207; goldfish`)",
        ));
    }
    let out = inputs
        .object("model")?
        .call(ctx.host(), "label_ids", labels)?;
    let mut it = out.into_iter();
    match (it.next(), it.next()) {
        (Some(v @ Value::Tensor(_)), Some(n @ Value::Tensor(_))) => Ok(vec![v, n]),
        _ => Err(NodeError::failed("label_ids returned no labels")),
    }
}

/// The node.
pub fn node() -> NodeDef {
    let cond = || PortType::conditioning_of(Dim::Fixed(1), Family::named(FAMILY));
    NodeDef::new("dit.class_labels", class_labels)
        .doc("Class labels as a DiT's conditioning, one image per label: ids, or names from the model's id2label (ImageNet's for the published DiTs: `golden retriever`, `tench`; any synonym, any case), separated by `;`. `negative` is the \"no class\" label for classifier-free guidance (samplers.sample's negative input; DiT's usual cfg is 4).")
        .input("model", PortType::handle_of("Denoiser", Family::named(FAMILY)), "the DiT (its class names and count)")
        .output("positive", cond(), "the labels (N×1×1)")
        .output("negative", cond(), "the no-class label for each")
        .param(Param::string("labels").default("207").doc("class ids or names, separated by `;`"))
}
