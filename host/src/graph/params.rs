//! Checking parameter values against a node's parameter schema.

use std::path::Path;

use latentflow_plugin_api::{ParamKind, ParamSpec};
use serde_json::Value as Json;

use super::diag::did_you_mean;

/// A problem with one parameter value: a message and maybe a hint.
pub struct ParamProblem {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

fn problem(message: String) -> ParamProblem {
    ParamProblem {
        message,
        hint: None,
    }
}

fn range_text(spec: &ParamSpec) -> String {
    match (&spec.min, &spec.max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        _ => String::new(),
    }
}

fn check_range(spec: &ParamSpec, v: f64) -> Result<(), ParamProblem> {
    let low = spec.min.is_some_and(|m| v < m);
    let high = spec.max.is_some_and(|m| v > m);
    if low || high {
        return Err(problem(format!(
            "parameter `{}` is {v}, out of range: it must be {}",
            spec.name,
            range_text(spec)
        )));
    }
    Ok(())
}

/// Checks `value` against `spec`; returns the value to pass to the node (paths resolved against
/// `base_dir`, `random` seeds replaced by `seed_for_random`).
pub fn check(
    spec: &ParamSpec,
    value: &Json,
    base_dir: &Path,
    seed_for_random: u64,
) -> Result<Json, ParamProblem> {
    let name = spec.name.as_str();
    let wrong = |want: &str| {
        problem(format!(
            "parameter `{name}` must be {want}, got {}",
            match value {
                Json::String(s) => format!("the string \"{s}\""),
                other => other.to_string(),
            }
        ))
    };
    match spec.kind {
        ParamKind::Bool => value
            .as_bool()
            .map(Json::from)
            .ok_or_else(|| wrong("true or false")),
        ParamKind::Int => {
            let v = match value.as_i64() {
                Some(v) => v,
                None if value.is_u64() => {
                    return Err(problem(format!(
                        "parameter `{name}` is {value}, which does not fit a 64-bit signed integer (at most {})",
                        i64::MAX
                    )))
                }
                None => return Err(wrong("a whole number")),
            };
            check_range(spec, v as f64)?;
            Ok(Json::from(v))
        }
        ParamKind::Float => {
            let v = value.as_f64().ok_or_else(|| wrong("a number"))?;
            check_range(spec, v)?;
            Ok(value.clone())
        }
        ParamKind::String => value
            .as_str()
            .map(Json::from)
            .ok_or_else(|| wrong("a string")),
        ParamKind::Path => {
            let s = value.as_str().ok_or_else(|| wrong("a path string"))?;
            let p = Path::new(s);
            let mut resolved = if s.is_empty() || p.is_absolute() {
                // Empty means "none"; it stays empty.
                p.to_path_buf()
            } else {
                base_dir.join(p)
            };
            // Not a file: maybe a model name (a Hugging Face repo id, a file in the model
            // folders).
            if !s.is_empty() && !resolved.exists() {
                match crate::models::resolve_missing(s, &resolved) {
                    Ok(Some(found)) => resolved = found,
                    Ok(None) => {}
                    Err(message) => {
                        return Err(ParamProblem {
                            message: format!("parameter `{name}`: {message}"),
                            hint: Some(crate::models::HINT.into()),
                        })
                    }
                }
            }
            Ok(Json::from(resolved.to_string_lossy().into_owned()))
        }
        ParamKind::Enum => {
            let s = value
                .as_str()
                .ok_or_else(|| wrong("one of the listed choices"))?;
            if spec.choices.iter().any(|c| c.as_str() == s) {
                Ok(Json::from(s))
            } else {
                let choices: Vec<&str> = spec.choices.iter().map(|c| c.as_str()).collect();
                Err(ParamProblem {
                    message: format!(
                        "parameter `{name}` is \"{s}\", which is not one of: {}",
                        choices.join(", ")
                    ),
                    hint: did_you_mean(s, choices.iter().copied()),
                })
            }
        }
        ParamKind::Seed => {
            if value.as_str() == Some("random") {
                return Ok(Json::from(seed_for_random));
            }
            let v = value
                .as_u64()
                .ok_or_else(|| wrong("a non-negative whole number or `random`"))?;
            check_range(spec, v as f64)?;
            Ok(Json::from(v))
        }
        ParamKind::Json => Ok(value.clone()),
    }
}

/// The default of `spec`, parsed.
pub fn default_of(spec: &ParamSpec) -> Option<Json> {
    spec.default
        .as_ref()
        .and_then(|s| serde_json::from_str(s.as_str()).ok())
}
