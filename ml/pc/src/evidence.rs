//! What is known of each variable: nothing, its value, or a weight for each value (soft
//! evidence, such as a VQ encoder's code probabilities).

use crate::{Circuit, PcError};

/// Evidence on one variable.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Nothing is known (every value weighs 1).
    Missing,
    /// The value is known.
    Value(usize),
    /// A non-negative weight per value.
    Soft(Vec<f64>),
}

/// Evidence on every variable of a circuit.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence(pub Vec<Observation>);

impl Evidence {
    /// Nothing known about `n` variables.
    pub fn missing(n: usize) -> Self {
        Evidence(vec![Observation::Missing; n])
    }

    /// Every value known.
    pub fn values(values: &[usize]) -> Self {
        Evidence(values.iter().map(|&v| Observation::Value(v)).collect())
    }

    /// Checks the evidence against the circuit's variables.
    pub fn check(&self, c: &Circuit) -> Result<(), PcError> {
        if self.0.len() != c.num_vars() {
            return Err(PcError::Evidence(format!(
                "{} observations for {} variables",
                self.0.len(),
                c.num_vars()
            )));
        }
        for (i, (o, &k)) in self.0.iter().zip(c.cards()).enumerate() {
            match o {
                Observation::Missing => {}
                Observation::Value(v) if *v < k => {}
                Observation::Value(v) => {
                    return Err(PcError::Evidence(format!("variable {i}: value {v} of {k}")))
                }
                Observation::Soft(w) => {
                    if w.len() != k {
                        return Err(PcError::Evidence(format!(
                            "variable {i}: {} weights for {k} values",
                            w.len()
                        )));
                    }
                    if w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                        return Err(PcError::Evidence(format!(
                            "variable {i}: weights must be finite and non-negative"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The weight of value `c` of variable `i`.
    pub fn weight(&self, i: usize, c: usize) -> f64 {
        match &self.0[i] {
            Observation::Missing => 1.0,
            Observation::Value(v) => f64::from(u8::from(*v == c)),
            Observation::Soft(w) => w[c],
        }
    }
}
