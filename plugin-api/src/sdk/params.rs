//! Parameter schemas (for descriptors) and typed parameter access (for node code).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::descriptor::{ParamKind, ParamSpec};
use crate::error::NodeError;

/// Builder for one [`ParamSpec`].
#[derive(Clone, Debug)]
pub struct Param {
    spec: ParamSpec,
}

impl Param {
    fn new(name: &str, kind: ParamKind) -> Self {
        Param {
            spec: ParamSpec {
                name: name.into(),
                kind,
                default: None,
                min: None,
                max: None,
                choices: Vec::new(),
                doc: String::new(),
            },
        }
    }

    /// A boolean parameter.
    pub fn bool(name: &str) -> Self {
        Param::new(name, ParamKind::Bool)
    }

    /// An integer parameter.
    pub fn int(name: &str) -> Self {
        Param::new(name, ParamKind::Int)
    }

    /// A float parameter.
    pub fn float(name: &str) -> Self {
        Param::new(name, ParamKind::Float)
    }

    /// A string parameter.
    pub fn string(name: &str) -> Self {
        Param::new(name, ParamKind::String)
    }

    /// A path parameter (relative paths resolve against the graph file's folder).
    pub fn path(name: &str) -> Self {
        Param::new(name, ParamKind::Path)
    }

    /// A seed parameter (an integer, or `random`).
    pub fn seed(name: &str) -> Self {
        Param::new(name, ParamKind::Seed).range(0.0, u32::MAX as f64 * u32::MAX as f64)
    }

    /// Any JSON value.
    pub fn json(name: &str) -> Self {
        Param::new(name, ParamKind::Json)
    }

    /// The `device` parameter of model loaders: where the model computes (`cpu`, `cuda:N`,
    /// `wgpu`; default `cpu`). The host sets it from the graph's `device:` when a node does not,
    /// and checks it against the node's devices and this machine's before anything runs.
    pub fn device() -> Self {
        Param::string(crate::device::DEVICE_PARAM)
            .default("cpu")
            .doc("where the model computes: cpu, cuda:N or wgpu (the graph's `device:` when not set here); checked against the node's devices and this machine's before anything runs")
    }

    /// One of `choices`.
    pub fn choice(name: &str, choices: &[&str]) -> Self {
        let mut p = Param::new(name, ParamKind::Enum);
        p.spec.choices = choices.iter().map(|c| c.to_string()).collect();
        p
    }

    /// Sets the default (making the parameter optional).
    pub fn default(mut self, value: impl Into<Json>) -> Self {
        self.spec.default = Some(value.into().to_string());
        self
    }

    /// Sets inclusive bounds.
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.spec.min = Some(min);
        self.spec.max = Some(max);
        self
    }

    /// Sets the lower bound.
    pub fn min(mut self, min: f64) -> Self {
        self.spec.min = Some(min);
        self
    }

    /// Sets the documentation line.
    pub fn doc(mut self, doc: &str) -> Self {
        self.spec.doc = doc.into();
        self
    }

    /// The finished spec.
    pub fn into_spec(self) -> ParamSpec {
        self.spec
    }
}

/// A node instance's parameters: the validated values, defaults filled in.
#[derive(Clone, Debug, Default)]
pub struct Params {
    map: Map<String, Json>,
}

impl Params {
    /// Parses the host's JSON object and fills in defaults from `specs`.
    pub fn parse(json: &str, specs: &[ParamSpec]) -> Result<Self, NodeError> {
        let mut map = if json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Json>(json) {
                Ok(Json::Object(m)) => m,
                Ok(other) => {
                    return Err(NodeError::invalid(format!(
                        "params must be an object, got {other}"
                    )))
                }
                Err(e) => return Err(NodeError::invalid(format!("params are not JSON: {e}"))),
            }
        };
        for spec in specs {
            if !map.contains_key(spec.name.as_str()) {
                if let Some(d) = &spec.default {
                    let v = serde_json::from_str(d.as_str()).map_err(|e| {
                        NodeError::invalid(format!("bad default for `{}`: {e}", spec.name))
                    })?;
                    map.insert(spec.name.to_string(), v);
                }
            }
        }
        Ok(Params { map })
    }

    /// The parameters as a JSON object.
    pub fn as_map(&self) -> &Map<String, Json> {
        &self.map
    }

    /// The raw JSON value of `name`.
    pub fn raw(&self, name: &str) -> Result<&Json, NodeError> {
        self.map
            .get(name)
            .ok_or_else(|| NodeError::invalid(format!("missing parameter `{name}`")))
    }

    /// Whether `name` has a value.
    pub fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    fn wrong(name: &str, want: &str, got: &Json) -> NodeError {
        NodeError::invalid(format!("parameter `{name}` should be {want}, got {got}"))
    }

    /// `name` as an integer (floats with no fractional part convert).
    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        let v = self.raw(name)?;
        v.as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| Self::wrong(name, "an integer in the range of i64", v))
    }

    /// `name` as a non-negative integer.
    pub fn usize(&self, name: &str) -> Result<usize, NodeError> {
        let v = self.int(name)?;
        usize::try_from(v)
            .map_err(|_| NodeError::invalid(format!("parameter `{name}` must be ≥ 0, got {v}")))
    }

    /// `name` as a seed.
    pub fn seed(&self, name: &str) -> Result<u64, NodeError> {
        let v = self.raw(name)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(name, "a seed (a whole number ≥ 0)", v))
    }

    /// `name` as a float.
    pub fn f64(&self, name: &str) -> Result<f64, NodeError> {
        let v = self.raw(name)?;
        v.as_f64().ok_or_else(|| Self::wrong(name, "a number", v))
    }

    /// `name` as a boolean.
    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        let v = self.raw(name)?;
        v.as_bool()
            .ok_or_else(|| Self::wrong(name, "true or false", v))
    }

    /// `name` as a string.
    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        let v = self.raw(name)?;
        v.as_str().ok_or_else(|| Self::wrong(name, "a string", v))
    }

    /// `name` deserialized into `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, NodeError> {
        let v = self.raw(name)?;
        serde_json::from_value(v.clone())
            .map_err(|e| NodeError::invalid(format!("parameter `{name}`: {e}")))
    }
}
