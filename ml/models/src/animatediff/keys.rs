//! The two layouts motion adapters come in, and the plan read off a file's names.
//!
//! diffusers: `{down,up}_blocks.i.motion_modules.j.{norm, proj_in, proj_out,
//! transformer_blocks.k.{norm1-3, attn1, attn2, ff, pos_embed.pe}}` and
//! `mid_block.motion_modules.j.*`. The original AnimateDiff checkpoints put the same under
//! `motion_modules.j.temporal_transformer.*`, name the attentions `attention_blocks.{0,1}`
//! (each with its own `pos_encoder.pe`), the norms `norms.{0,1}` and `ff_norm`.

use std::collections::BTreeSet;

use latentflow_weights::Header;

use super::config::MotionPlan;

/// Where a table is asked for in the original layout (mapped by [`original_name`]).
pub(crate) const ORIGINAL_PE_1: &str = "attn1.pos_encoder.pe";
/// The second attention's table in the original layout.
pub(crate) const ORIGINAL_PE_2: &str = "attn2.pos_encoder.pe";

/// The key layout of a motion-adapter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// diffusers' `MotionAdapter` names.
    Diffusers,
    /// The original AnimateDiff checkpoints' names.
    Original,
}

impl Layout {
    /// The layout of the file whose header is `h`.
    pub fn of(h: &Header) -> Layout {
        if h.tensors
            .keys()
            .any(|k| k.contains(".temporal_transformer."))
        {
            Layout::Original
        } else {
            Layout::Diffusers
        }
    }
}

/// The original checkpoint's name of diffusers' `name`.
pub fn original_name(name: &str) -> String {
    let Some(at) = name.find(".motion_modules.") else {
        return name.to_string();
    };
    let rest = &name[at + ".motion_modules.".len()..];
    let (index, inner) = rest.split_once('.').unwrap_or((rest, ""));
    let inner = inner
        .replace(".attn1.", ".attention_blocks.0.")
        .replace(".attn2.", ".attention_blocks.1.")
        .replace(".norm1.", ".norms.0.")
        .replace(".norm2.", ".norms.1.")
        .replace(".norm3.", ".ff_norm.");
    format!(
        "{}.motion_modules.{index}.temporal_transformer.{inner}",
        &name[..at]
    )
}

/// `prefix.N.` → N, for every name.
fn indices<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> BTreeSet<usize> {
    names
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|r| r.split('.').next()?.parse().ok())
        .collect()
}

/// The count of 0..N indices, refusing gaps.
fn count(found: &BTreeSet<usize>, what: &str) -> Result<usize, String> {
    let n = found.len();
    if found.iter().copied().eq(0..n) {
        Ok(n)
    } else {
        Err(format!("{what} are numbered {found:?}, not 0..{n}"))
    }
}

/// The plan of a single-file adapter, read off its names and shapes. Heads are not in the
/// file: 8, as in every released adapter. The position table's length is the stored one's,
/// else 32.
pub fn plan_from_names(h: &Header, layout: Layout) -> Result<MotionPlan, String> {
    let names = || h.tensors.keys();
    let inner = match layout {
        Layout::Diffusers => "",
        Layout::Original => "temporal_transformer.",
    };
    let levels = count(&indices(names(), "down_blocks."), "down blocks")?;
    if levels == 0 {
        return Err("no `down_blocks.N.motion_modules` tensors: not a motion adapter".into());
    }
    let module = |prefix: String| -> Result<(usize, usize), String> {
        let weight = format!("{prefix}{inner}proj_in.weight");
        let channels = match h.shape(&weight) {
            Some([o, i]) if o == i => *o,
            other => return Err(format!("`{weight}` is {other:?}, expected C×C")),
        };
        let blocks = count(
            &indices(names(), &format!("{prefix}{inner}transformer_blocks.")),
            &format!("the transformer blocks of {prefix}"),
        )?;
        Ok((channels, blocks))
    };
    let (mut channels, mut layers, mut transformer_layers) = (vec![], vec![], vec![]);
    for i in 0..levels {
        let p = format!("down_blocks.{i}.motion_modules.");
        let n = count(
            &indices(names(), &p),
            &format!("down block {i}'s motion modules"),
        )?;
        let (c, t) = module(format!("{p}0."))?;
        channels.push(c);
        layers.push(n);
        transformer_layers.push(t);
    }
    let up = count(&indices(names(), "up_blocks."), "up blocks")?;
    if up != levels {
        return Err(format!("{levels} down blocks but {up} up blocks"));
    }
    let mid_found = indices(names(), "mid_block.motion_modules.");
    let mid = (0..count(&mid_found, "mid-block motion modules")?)
        .map(|j| module(format!("mid_block.motion_modules.{j}.")).map(|(_, t)| t))
        .collect::<Result<Vec<_>, _>>()?;
    let pe = h
        .tensors
        .iter()
        .find(|(k, _)| k.ends_with(".pe"))
        .map(|(_, e)| e.shape.clone());
    let max_seq_length = match pe.as_deref() {
        Some([1, len, _]) => *len,
        Some(other) => return Err(format!("a position table of shape {other:?}")),
        None => 32,
    };
    let heads = channels
        .iter()
        .map(|&c| if c % 8 == 0 { Ok(8) } else { Err(c) })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|c| format!("{c} channels do not split into the 8 heads adapters use"))?;
    Ok(MotionPlan {
        channels,
        layers,
        transformer_layers,
        heads,
        mid,
        max_seq_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_original_layout() {
        assert_eq!(
            original_name("down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_q.weight"),
            "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight"
        );
        assert_eq!(
            original_name("mid_block.motion_modules.0.transformer_blocks.0.norm3.bias"),
            "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.bias"
        );
        assert_eq!(
            original_name("up_blocks.0.motion_modules.2.transformer_blocks.0.attn1.pos_encoder.pe"),
            "up_blocks.0.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
        );
        assert_eq!(
            original_name("up_blocks.0.motion_modules.2.proj_in.weight"),
            "up_blocks.0.motion_modules.2.temporal_transformer.proj_in.weight"
        );
    }
}
