//! Sizes: buffers a node declares from its parameters (`NodeDescriptor::allocates`), refused
//! before anything runs when they exceed the allocation limit.

use latentflow_plugin_api::sdk::human_bytes;
use latentflow_plugin_api::Extent;
use serde_json::Value as Json;

use super::{Draft, Validator};
use crate::graph::diag::Pos;

impl Validator<'_> {
    pub(super) fn sizes(&mut self, draft: &Draft<'_>) {
        let Some(ty) = draft.ty.clone() else { return };
        for rule in &ty.desc.allocates {
            let int = |name: &str| draft.params.get(name).and_then(Json::as_u64);
            // A dimension whose parameter is missing or invalid was reported already.
            let Some(dims) = rule
                .dims
                .iter()
                .map(|d| match d {
                    Extent::Fixed(n) => Some(*n),
                    Extent::Param(p) => int(p),
                    Extent::Ratio(p, by) => Some(int(p)? / int(by)?.max(1)),
                })
                .collect::<Option<Vec<u64>>>()
            else {
                continue;
            };
            let total = dims
                .iter()
                .try_fold(u128::from(rule.bytes_each), |acc, &d| {
                    acc.checked_mul(u128::from(d))
                });
            let limit = *self
                .alloc_limit
                .get_or_insert_with(crate::limits::default_alloc_limit);
            if total.is_some_and(|t| t <= u128::from(limit)) {
                continue;
            }
            let size = total.map_or_else(|| "more than can be addressed".into(), human_bytes);
            let message = format!(
                "{} {dims:?} would take {size} but one result may take at most {}",
                rule.what,
                human_bytes(u128::from(limit))
            );
            let pos = self.largest_param(draft, &rule.dims);
            let d = self.err("too-large", pos, message);
            d.node = Some(draft.id.clone());
            d.hint = Some(
                "lower the sizes, or raise the limit with LATENTFLOW_ALLOC_LIMIT (bytes, or with K/M/G/T)"
                    .into(),
            );
        }
    }

    /// Where the largest of the dimension parameters written in the graph is; else the node.
    fn largest_param(&self, draft: &Draft<'_>, dims: &[Extent]) -> Pos {
        let names: Vec<&str> = dims
            .iter()
            .filter_map(|d| match d {
                Extent::Param(p) | Extent::Ratio(p, _) => Some(p.as_str()),
                Extent::Fixed(_) => None,
            })
            .collect();
        draft
            .def
            .params
            .0
            .iter()
            .filter(|(name, _)| names.contains(&name.value.as_str()))
            .max_by_key(|(name, _)| draft.params.get(name.value.as_str()).and_then(Json::as_u64))
            .map_or(draft.pos, |(_, value)| value.pos)
    }
}
