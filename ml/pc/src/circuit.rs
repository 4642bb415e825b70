//! The circuit: nodes in topological order, the root last, checked when built.
//!
//! Rules (what makes the queries exact):
//! - every child comes before its parent;
//! - input nodes hold a categorical distribution over their variable's values;
//! - sum nodes mix children over the same variables (smooth) with weights summing to 1;
//! - product nodes join children over disjoint variables (decomposable);
//! - the root covers every variable, so with no evidence the circuit sums to 1.

use crate::PcError;

/// Tolerance on distributions summing to 1.
const NORMALISED: f64 = 1e-6;

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A categorical distribution over one variable's values.
    Input {
        /// The variable.
        var: usize,
        /// Its probabilities (as many as the variable has values).
        probs: Vec<f64>,
    },
    /// The product of children over disjoint variables.
    Product {
        /// Child indices.
        children: Vec<usize>,
    },
    /// A weighted mixture of children over the same variables.
    Sum {
        /// Child indices.
        children: Vec<usize>,
        /// Their weights, summing to 1.
        weights: Vec<f64>,
    },
}

impl Node {
    /// The children (none for inputs).
    pub fn children(&self) -> &[usize] {
        match self {
            Node::Input { .. } => &[],
            Node::Product { children } | Node::Sum { children, .. } => children,
        }
    }
}

/// A set of variables as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope(Vec<u64>);

impl Scope {
    fn empty(n: usize) -> Self {
        Scope(vec![0; n.div_ceil(64).max(1)])
    }
    fn insert(&mut self, v: usize) {
        self.0[v / 64] |= 1 << (v % 64);
    }
    fn disjoint(&self, o: &Scope) -> bool {
        self.0.iter().zip(&o.0).all(|(a, b)| a & b == 0)
    }
    fn union(&mut self, o: &Scope) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= b;
        }
    }
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// A smooth, decomposable, normalised circuit.
#[derive(Debug, Clone)]
pub struct Circuit {
    cards: Vec<usize>,
    nodes: Vec<Node>,
}

fn check_distribution(node: usize, what: &str, p: &[f64]) -> Result<(), PcError> {
    if let Some(bad) = p.iter().find(|x| !x.is_finite() || **x < 0.0) {
        return Err(PcError::structure(
            node,
            format!("{what} holds {bad}, not a probability"),
        ));
    }
    let s: f64 = p.iter().sum();
    if (s - 1.0).abs() > NORMALISED {
        return Err(PcError::structure(
            node,
            format!("{what} sum to {s}, not 1"),
        ));
    }
    Ok(())
}

impl Circuit {
    /// A circuit over variables with `cards[i]` values each; checks every rule.
    pub fn new(cards: Vec<usize>, nodes: Vec<Node>) -> Result<Self, PcError> {
        if cards.is_empty() || cards.contains(&0) {
            return Err(PcError::Invalid(
                "a circuit needs variables, each with at least one value".into(),
            ));
        }
        if nodes.is_empty() {
            return Err(PcError::Invalid("a circuit needs nodes".into()));
        }
        let n = cards.len();
        let mut scopes: Vec<Scope> = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            if let Some(&c) = node.children().iter().find(|&&c| c >= i) {
                return Err(PcError::structure(
                    i,
                    format!("child {c} does not come before its parent"),
                ));
            }
            let mut scope = Scope::empty(n);
            match node {
                Node::Input { var, probs } => {
                    if *var >= n {
                        return Err(PcError::structure(i, format!("variable {var} of {n}")));
                    }
                    if probs.len() != cards[*var] {
                        return Err(PcError::structure(
                            i,
                            format!(
                                "{} probabilities for variable {var} of {} values",
                                probs.len(),
                                cards[*var]
                            ),
                        ));
                    }
                    check_distribution(i, "its probabilities", probs)?;
                    scope.insert(*var);
                }
                Node::Product { children } => {
                    if children.is_empty() {
                        return Err(PcError::structure(i, "a product without children"));
                    }
                    for &c in children {
                        if !scope.disjoint(&scopes[c]) {
                            return Err(PcError::structure(
                                i,
                                format!("not decomposable: child {c} shares variables with another child"),
                            ));
                        }
                        scope.union(&scopes[c]);
                    }
                }
                Node::Sum { children, weights } => {
                    if children.is_empty() {
                        return Err(PcError::structure(i, "a sum without children"));
                    }
                    if weights.len() != children.len() {
                        return Err(PcError::structure(
                            i,
                            format!("{} weights for {} children", weights.len(), children.len()),
                        ));
                    }
                    check_distribution(i, "its weights", weights)?;
                    scope = scopes[children[0]].clone();
                    if let Some(&c) = children.iter().find(|&&c| scopes[c] != scope) {
                        return Err(PcError::structure(
                            i,
                            format!(
                                "not smooth: child {c} covers other variables than child {}",
                                children[0]
                            ),
                        ));
                    }
                }
            }
            scopes.push(scope);
        }
        let root = nodes.len() - 1;
        if scopes[root].count() != n {
            return Err(PcError::structure(
                root,
                format!(
                    "the root covers {} of the {n} variables",
                    scopes[root].count()
                ),
            ));
        }
        Ok(Self { cards, nodes })
    }

    /// Values per variable.
    pub fn cards(&self) -> &[usize] {
        &self.cards
    }

    /// Variables.
    pub fn num_vars(&self) -> usize {
        self.cards.len()
    }

    /// The nodes, root last.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The root's index.
    pub fn root(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Replaces the parameters (same structure), checking them.
    pub(crate) fn with_nodes(&self, nodes: Vec<Node>) -> Result<Self, PcError> {
        Circuit::new(self.cards.clone(), nodes)
    }

    /// Edges (children of sums and products), a measure of size.
    pub fn num_edges(&self) -> usize {
        self.nodes.iter().map(|n| n.children().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(var: usize, probs: &[f64]) -> Node {
        Node::Input {
            var,
            probs: probs.to_vec(),
        }
    }

    #[test]
    fn the_rules_are_checked() {
        let ok = vec![
            input(0, &[0.5, 0.5]),
            input(1, &[0.2, 0.8]),
            Node::Product {
                children: vec![0, 1],
            },
        ];
        assert!(Circuit::new(vec![2, 2], ok).is_ok());
        let not_decomposable = vec![
            input(0, &[0.5, 0.5]),
            input(0, &[0.2, 0.8]),
            Node::Product {
                children: vec![0, 1],
            },
        ];
        let e = Circuit::new(vec![2], not_decomposable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not decomposable"), "{e}");
        let not_smooth = vec![
            input(0, &[0.5, 0.5]),
            input(1, &[0.2, 0.8]),
            Node::Sum {
                children: vec![0, 1],
                weights: vec![0.5, 0.5],
            },
        ];
        let e = Circuit::new(vec![2, 2], not_smooth)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not smooth"), "{e}");
        let unnormalised = vec![input(0, &[0.5, 0.6])];
        assert!(Circuit::new(vec![2], unnormalised).is_err());
        let forward_edge = vec![Node::Product { children: vec![1] }, input(0, &[1.0])];
        assert!(Circuit::new(vec![1], forward_edge).is_err());
        let partial_root = vec![input(0, &[1.0])];
        let e = Circuit::new(vec![1, 1], partial_root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("covers 1 of the 2"), "{e}");
    }
}
