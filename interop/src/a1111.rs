//! A1111's `parameters` text: what AUTOMATIC1111/Forge write into a PNG's `parameters` chunk,
//! and what image viewers and galleries (Civitai, Infinite Image Browsing, …) read back.
//!
//! ```text
//! a watercolor lighthouse at dusk
//! Negative prompt: blurry
//! Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model: v1-5
//! ```
//!
//! The prompt runs up to the `Negative prompt:` line, the negative prompt up to the last line,
//! and the last line holds `key: value` settings separated by commas; a value with commas is
//! double-quoted.

/// The PNG text-chunk keyword.
pub const KEY: &str = "parameters";

/// Parsed parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (empty if none).
    pub negative: String,
    /// The settings line, in order.
    pub settings: Vec<(String, String)>,
}

/// Why a `parameters` text is not usable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParametersError {
    /// A setting has a value LatentFlow cannot use.
    #[error("`{key}: {value}` {why}")]
    Setting {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// No `Steps:` settings line: not A1111 parameters.
    #[error("no settings line (`Steps: …, Sampler: …`): not A1111 parameters")]
    NoSettings,
}

/// A sampler in LatentFlow's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// `samplers.sample`'s `kind`.
    pub kind: &'static str,
    /// Karras sigmas.
    pub karras: bool,
}

/// A1111 sampler names and ours.
const SAMPLERS: &[(&str, &str)] = &[
    ("Euler a", "euler_a"),
    ("Euler", "euler"),
    ("LMS", "lms"),
    ("DDIM", "ddim"),
    ("DDPM", "ddpm"),
    ("DPM++ 2M", "dpmpp_2m"),
    ("UniPC", "unipc"),
    ("LCM", "lcm"),
];

impl Parameters {
    /// The value of setting `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn bad(key: &str, value: &str, why: impl Into<String>) -> ParametersError {
        ParametersError::Setting {
            key: key.into(),
            value: value.into(),
            why: why.into(),
        }
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ParametersError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Self::bad(key, v, "is not a number")),
        }
    }

    /// `Steps`.
    pub fn steps(&self) -> Result<Option<u32>, ParametersError> {
        self.number("Steps")
    }

    /// `CFG scale`.
    pub fn cfg(&self) -> Result<Option<f64>, ParametersError> {
        self.number("CFG scale")
    }

    /// `Seed`.
    pub fn seed(&self) -> Result<Option<u64>, ParametersError> {
        self.number("Seed")
    }

    /// `Clip skip` as LatentFlow counts it (A1111's 2 = skip one layer).
    pub fn clip_skip(&self) -> Result<Option<u32>, ParametersError> {
        Ok(self
            .number::<u32>("Clip skip")?
            .map(|n| n.saturating_sub(1)))
    }

    /// `Size` as (width, height).
    pub fn size(&self) -> Result<Option<(u32, u32)>, ParametersError> {
        let Some(v) = self.get("Size") else {
            return Ok(None);
        };
        let parsed = v
            .split_once('x')
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
        parsed
            .map(Some)
            .ok_or_else(|| Self::bad("Size", v, "is not WIDTHxHEIGHT"))
    }

    /// `Sampler` (with the older ` Karras` suffix or the newer `Schedule type`).
    pub fn sampler(&self) -> Result<Option<Sampler>, ParametersError> {
        let Some(v) = self.get("Sampler") else {
            return Ok(None);
        };
        let (name, mut karras) = match v.strip_suffix(" Karras") {
            Some(n) => (n, true),
            None => (v, false),
        };
        match self.get("Schedule type") {
            None | Some("Automatic") | Some("Uniform") => {}
            Some("Karras") => karras = true,
            Some(other) => {
                return Err(Self::bad(
                    "Schedule type",
                    other,
                    "has no LatentFlow equivalent (Karras and Uniform do)",
                ))
            }
        }
        let kind = SAMPLERS
            .iter()
            .find(|(a, _)| *a == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = SAMPLERS.iter().map(|(a, _)| *a).collect();
                Self::bad(
                    "Sampler",
                    v,
                    format!(
                        "has no LatentFlow equivalent (these do: {})",
                        names.join(", ")
                    ),
                )
            })?;
        Ok(Some(Sampler { kind, karras }))
    }
}

/// Parses a `parameters` text.
pub fn parse(text: &str) -> Result<Parameters, ParametersError> {
    let text = text.trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let Some(settings_at) = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("Steps:"))
    else {
        return Err(ParametersError::NoSettings);
    };
    let mut prompt = Vec::new();
    let mut negative = Vec::new();
    let mut in_negative = false;
    for line in &lines[..settings_at] {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(*line);
        }
    }
    let settings = lines[settings_at..].join(", ");
    Ok(Parameters {
        prompt: prompt.join("\n"),
        negative: negative.join("\n"),
        settings: split_settings(&settings),
    })
}

/// `key: value, key: "quoted, value", …`.
fn split_settings(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(colon) = rest.find(':') else { break };
        let key = rest[..colon].trim().to_string();
        let mut value_part = rest[colon + 1..].trim_start();
        let value;
        if let Some(quoted) = value_part.strip_prefix('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.unwrap_or(quoted.len());
            value = quoted[..end].replace("\\\"", "\"");
            value_part = quoted.get(end + 1..).unwrap_or("");
            rest = value_part.trim_start().trim_start_matches(',').trim_start();
        } else {
            match value_part.find(',') {
                Some(comma) => {
                    value = value_part[..comma].trim().to_string();
                    rest = value_part[comma + 1..].trim_start();
                }
                None => {
                    value = value_part.trim().to_string();
                    rest = "";
                }
            }
        }
        if !key.is_empty() {
            out.push((key, value));
        }
    }
    out
}

/// Writes a `parameters` text.
pub fn format(p: &Parameters) -> String {
    let mut out = p.prompt.clone();
    if !p.negative.is_empty() {
        out.push_str("\nNegative prompt: ");
        out.push_str(&p.negative);
    }
    out.push('\n');
    let parts: Vec<String> = p
        .settings
        .iter()
        .map(|(k, v)| {
            if v.contains(',') || v.contains('"') || v.contains(':') {
                format!("{k}: \"{}\"", v.replace('"', "\\\""))
            } else {
                format!("{k}: {v}")
            }
        })
        .collect();
    out.push_str(&parts.join(", "));
    out
}

/// The A1111 name of one of our sampler kinds.
pub fn sampler_name(kind: &str) -> Option<&'static str> {
    SAMPLERS.iter().find(|(_, k)| *k == kind).map(|(a, _)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape A1111 v1.9 writes (modules/processing.py, create_infotext).
    const WRITTEN: &str = "masterpiece, a cat, (fluffy:1.2)\nsitting on a chair\nNegative prompt: blurry, lowres\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3001, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: \"ring: 1a2b3c, other: 4d5e\", Version: v1.9.4";

    #[test]
    fn reads_prompts_and_settings() {
        let p = parse(WRITTEN).unwrap();
        assert_eq!(
            p.prompt,
            "masterpiece, a cat, (fluffy:1.2)\nsitting on a chair"
        );
        assert_eq!(p.negative, "blurry, lowres");
        assert_eq!(p.steps().unwrap(), Some(25));
        assert_eq!(p.cfg().unwrap(), Some(7.0));
        assert_eq!(p.seed().unwrap(), Some(3001));
        assert_eq!(p.size().unwrap(), Some((512, 768)));
        assert_eq!(p.clip_skip().unwrap(), Some(1));
        assert_eq!(
            p.sampler().unwrap(),
            Some(Sampler {
                kind: "dpmpp_2m",
                karras: true
            })
        );
        assert_eq!(p.get("Model"), Some("v1-5-pruned-emaonly"));
        assert_eq!(p.get("Lora hashes"), Some("ring: 1a2b3c, other: 4d5e"));
        assert_eq!(p.get("Version"), Some("v1.9.4"));
    }

    #[test]
    fn reads_the_older_karras_suffix_and_no_negative() {
        let p = parse("a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 64x64")
            .unwrap();
        assert_eq!(p.negative, "");
        assert_eq!(
            p.sampler().unwrap(),
            Some(Sampler {
                kind: "euler_a",
                karras: false
            })
        );
        let p = parse("x\nSteps: 20, Sampler: DPM++ 2M Karras").unwrap();
        assert_eq!(
            p.sampler().unwrap(),
            Some(Sampler {
                kind: "dpmpp_2m",
                karras: true
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        let p = parse("x\nSteps: 20, Sampler: DPM++ SDE").unwrap();
        let e = p.sampler().unwrap_err().to_string();
        assert!(
            e.contains("`Sampler: DPM++ SDE` has no LatentFlow equivalent"),
            "{e}"
        );
        let p = parse("x\nSteps: many").unwrap();
        assert!(p.steps().is_err());
        assert_eq!(parse("just a caption"), Err(ParametersError::NoSettings));
    }

    #[test]
    fn writes_what_it_reads() {
        let p = parse(WRITTEN).unwrap();
        assert_eq!(parse(&format(&p)).unwrap(), p);
    }
}
