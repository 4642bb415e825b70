//! Circuit structures, with random parameters from a seeded generator (learn them with
//! [`crate::learn::em`]):
//!
//! - [`mixture`]: a mixture of fully factorised categoricals (one sum over products);
//! - [`chow_liu_tree`] and [`hclt`]: a hidden Chow-Liu tree — the maximum mutual-information
//!   spanning tree of the data's variables, each tree node given a hidden variable of `hidden`
//!   states;
//! - [`poon_domingos`]: the image structure of Poon & Domingos (2011): every rectangle of a grid
//!   is split along cuts at multiples of `delta`, each region holds `regions` sum nodes over the
//!   element-wise products of its halves' nodes, single pixels hold `regions` input nodes;
//! - [`quad_tree`]: the image structure of Tiramisu's released circuits (pyjuice's
//!   `generate_pd_circuit` with `factor_half = false`): each region is halved along both sides
//!   at once, `latents` element-wise products of its (up to) four parts, and `latents` sums each
//!   over all of those products.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Circuit, Node, PcError};

/// `k` random probabilities (each at least a twentieth of the largest).
fn random_distribution(rng: &mut ChaCha8Rng, k: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..k).map(|_| rng.random_range(0.05..1.0)).collect();
    let s: f64 = raw.iter().sum();
    raw.into_iter().map(|x| x / s).collect()
}

struct Builder {
    nodes: Vec<Node>,
    rng: ChaCha8Rng,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder {
            nodes: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }
    fn input(&mut self, var: usize, k: usize) -> usize {
        let probs = random_distribution(&mut self.rng, k);
        self.push(Node::Input { var, probs })
    }
    fn sum(&mut self, children: Vec<usize>) -> usize {
        let weights = random_distribution(&mut self.rng, children.len());
        self.push(Node::Sum { children, weights })
    }
}

/// A mixture of `components` fully factorised categoricals over variables with `cards` values.
pub fn mixture(cards: &[usize], components: usize, seed: u64) -> Result<Circuit, PcError> {
    if components == 0 {
        return Err(PcError::Invalid("a mixture needs components".into()));
    }
    let mut b = Builder::new(seed);
    let mut products = Vec::with_capacity(components);
    for _ in 0..components {
        let inputs: Vec<usize> = cards
            .iter()
            .enumerate()
            .map(|(v, &k)| b.input(v, k))
            .collect();
        products.push(b.push(Node::Product { children: inputs }));
    }
    b.sum(products);
    Circuit::new(cards.to_vec(), b.nodes)
}

/// The Chow-Liu tree of `data` (rows of values): parent of each variable (`None` for the root,
/// variable 0), maximising the summed pairwise mutual information (Laplace-smoothed counts).
pub fn chow_liu_tree(data: &[Vec<usize>], cards: &[usize]) -> Result<Vec<Option<usize>>, PcError> {
    let n = cards.len();
    if data.is_empty() {
        return Err(PcError::Invalid("a Chow-Liu tree needs data".into()));
    }
    for (r, row) in data.iter().enumerate() {
        if row.len() != n || row.iter().zip(cards).any(|(v, k)| v >= k) {
            return Err(PcError::Invalid(format!(
                "data row {r} does not fit {n} variables with {cards:?} values"
            )));
        }
    }
    let marginals: Vec<Vec<f64>> = (0..n)
        .map(|i| smoothed_marginal(data, i, cards[i]))
        .collect();
    let log_sums: Vec<f64> = marginals
        .iter()
        .map(|m| m.iter().map(|p| p.ln()).sum())
        .collect();
    let mi = |i: usize, j: usize| mutual_information(data, i, j, cards, &marginals, &log_sums);
    // Prim's algorithm on the complete graph, maximising.
    let mut parent = vec![None; n];
    let mut in_tree = vec![false; n];
    let mut best: Vec<(f64, usize)> = vec![(f64::NEG_INFINITY, 0); n];
    in_tree[0] = true;
    for (j, b) in best.iter_mut().enumerate().skip(1) {
        *b = (mi(0, j), 0);
    }
    for _ in 1..n {
        let Some(next) = (0..n)
            .filter(|&j| !in_tree[j])
            .max_by(|&a, &b| best[a].0.total_cmp(&best[b].0))
        else {
            break;
        };
        in_tree[next] = true;
        parent[next] = Some(best[next].1);
        for j in 0..n {
            if !in_tree[j] {
                let w = mi(next, j);
                if w > best[j].0 {
                    best[j] = (w, next);
                }
            }
        }
    }
    Ok(parent)
}

/// Laplace-smoothed marginal of variable `i`: (count + 1) / (rows + K).
fn smoothed_marginal(data: &[Vec<usize>], i: usize, k: usize) -> Vec<f64> {
    let mut c = vec![1.0; k];
    for row in data {
        c[row[i]] += 1.0;
    }
    let s: f64 = c.iter().sum();
    c.into_iter().map(|x| x / s).collect()
}

/// The mutual information of variables `i` and `j` under the smoothed joint
/// p(a, b) = (count(a, b) + 1/(KᵢKⱼ)) / (rows + 1) and the smoothed marginals, computed from the
/// pairs that occur (at most one per row) plus a closed form for all the cells that do not, so
/// its cost does not grow with KᵢKⱼ.
fn mutual_information(
    data: &[Vec<usize>],
    i: usize,
    j: usize,
    cards: &[usize],
    marginals: &[Vec<f64>],
    log_sums: &[f64],
) -> f64 {
    let (ki, kj) = (cards[i] as f64, cards[j] as f64);
    let total = data.len() as f64 + 1.0;
    let p0 = 1.0 / (ki * kj) / total;
    let mut pairs: Vec<(usize, usize)> = data.iter().map(|r| (r[i], r[j])).collect();
    pairs.sort_unstable();
    // Every cell as if it had no count, then the cells that do are corrected.
    let mut mi = p0 * (ki * kj * p0.ln() - kj * log_sums[i] - ki * log_sums[j]);
    let mut start = 0;
    while start < pairs.len() {
        let mut end = start;
        while end < pairs.len() && pairs[end] == pairs[start] {
            end += 1;
        }
        let (a, b) = pairs[start];
        let lm = marginals[i][a].ln() + marginals[j][b].ln();
        let p = p0 + (end - start) as f64 / total;
        mi += p * (p.ln() - lm) - p0 * (p0.ln() - lm);
        start = end;
    }
    mi
}

/// A hidden Chow-Liu tree over `parents` (from [`chow_liu_tree`]) with `hidden` states per
/// hidden variable: block B_v(h) = input_v^h × Π_{children u} Σ_{h'} w B_u(h'); the root
/// mixes B_root(h).
pub fn hclt(
    parents: &[Option<usize>],
    cards: &[usize],
    hidden: usize,
    seed: u64,
) -> Result<Circuit, PcError> {
    let n = cards.len();
    if parents.len() != n || hidden == 0 {
        return Err(PcError::Invalid(
            "an HCLT needs a parent per variable and hidden states".into(),
        ));
    }
    let roots: Vec<usize> = (0..n).filter(|&v| parents[v].is_none()).collect();
    if roots.len() != 1 || parents.iter().flatten().any(|&p| p >= n) {
        return Err(PcError::Invalid("the parents must form one tree".into()));
    }
    let mut children = vec![Vec::new(); n];
    for (v, p) in parents.iter().enumerate() {
        if let Some(p) = p {
            children[*p].push(v);
        }
    }
    // Post-order from the root (iterative; also detects cycles by counting).
    let mut order = Vec::with_capacity(n);
    let mut stack = vec![(roots[0], false)];
    while let Some((v, done)) = stack.pop() {
        if done {
            order.push(v);
            continue;
        }
        if order.len() + stack.len() > 2 * n {
            return Err(PcError::Invalid("the parents form a cycle".into()));
        }
        stack.push((v, true));
        for &u in &children[v] {
            stack.push((u, false));
        }
    }
    if order.len() != n {
        return Err(PcError::Invalid(
            "the parents do not reach every variable".into(),
        ));
    }
    let mut b = Builder::new(seed);
    let mut blocks: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &v in &order {
        let mut bv = Vec::with_capacity(hidden);
        for _ in 0..hidden {
            let mut parts = vec![b.input(v, cards[v])];
            for &u in &children[v] {
                let s = b.sum(blocks[u].clone());
                parts.push(s);
            }
            bv.push(if parts.len() == 1 {
                parts[0]
            } else {
                b.push(Node::Product { children: parts })
            });
        }
        blocks[v] = bv;
    }
    b.sum(blocks[roots[0]].clone());
    Circuit::new(cards.to_vec(), b.nodes)
}

/// The Poon-Domingos structure over a `width`×`height` grid of variables (row-major) with `k`
/// values each.
pub fn poon_domingos(
    width: usize,
    height: usize,
    k: usize,
    delta: &[usize],
    regions: usize,
    seed: u64,
) -> Result<Circuit, PcError> {
    if width == 0 || height == 0 || k == 0 || regions == 0 || delta.contains(&0) {
        return Err(PcError::Invalid(
            "Poon-Domingos needs a grid, values, regions and positive cut steps".into(),
        ));
    }
    let mut b = Builder::new(seed);
    let mut memo: HashMap<(usize, usize, usize, usize), Vec<usize>> = HashMap::new();
    let root = region(
        &mut b,
        &mut memo,
        (0, 0, width, height),
        width,
        k,
        delta,
        regions,
        true,
    );
    debug_assert_eq!(root.len(), 1);
    Circuit::new(vec![k; width * height], b.nodes)
}

/// Cut positions of a side of `size` cells: multiples of each step, else the middle.
fn cuts(size: usize, delta: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = delta
        .iter()
        .flat_map(|&d| (1..).map(move |m| m * d).take_while(move |&x| x < size))
        .collect();
    c.sort_unstable();
    c.dedup();
    if c.is_empty() && size > 1 {
        c.push(size / 2);
    }
    c
}

#[allow(clippy::too_many_arguments)]
fn region(
    b: &mut Builder,
    memo: &mut HashMap<(usize, usize, usize, usize), Vec<usize>>,
    (x, y, w, h): (usize, usize, usize, usize),
    width: usize,
    k: usize,
    delta: &[usize],
    regions: usize,
    root: bool,
) -> Vec<usize> {
    if let Some(n) = memo.get(&(x, y, w, h)) {
        return n.clone();
    }
    let count = if root { 1 } else { regions };
    let nodes = if w == 1 && h == 1 {
        let var = y * width + x;
        let inputs: Vec<usize> = (0..regions).map(|_| b.input(var, k)).collect();
        if root {
            vec![b.sum(inputs)]
        } else {
            inputs
        }
    } else {
        let mut products = Vec::new();
        let mut halves = Vec::new();
        for c in cuts(w, delta) {
            halves.push(((x, y, c, h), (x + c, y, w - c, h)));
        }
        for c in cuts(h, delta) {
            halves.push(((x, y, w, c), (x, y + c, w, h - c)));
        }
        for (a, bb) in halves {
            let left = region(b, memo, a, width, k, delta, regions, false);
            let right = region(b, memo, bb, width, k, delta, regions, false);
            for (l, r) in left.iter().zip(&right) {
                products.push(b.push(Node::Product {
                    children: vec![*l, *r],
                }));
            }
        }
        (0..count).map(|_| b.sum(products.clone())).collect()
    };
    memo.insert((x, y, w, h), nodes.clone());
    nodes
}

/// The halves of `[s, e)` as Tiramisu's `construct_divisions` (without `factor_half`) cuts them.
fn halves(s: usize, e: usize) -> Vec<(usize, usize)> {
    if e - s == 1 {
        vec![(s, e)]
    } else {
        let m = s + (e - s) / 2;
        vec![(s, m), (m, e)]
    }
}

/// The quad-tree structure over a `width`×`height` grid (row-major) of variables with `k`
/// values each, `latents` nodes per region (the root region has one sum).
pub fn quad_tree(
    width: usize,
    height: usize,
    k: usize,
    latents: usize,
    seed: u64,
) -> Result<Circuit, PcError> {
    if width == 0 || height == 0 || k == 0 || latents == 0 {
        return Err(PcError::Invalid(
            "a quad tree needs a grid, values and latents".into(),
        ));
    }
    let mut b = Builder::new(seed);
    let root = quad(&mut b, (0, height, 0, width), width, k, latents, true);
    debug_assert_eq!(root.len(), 1);
    Circuit::new(vec![k; width * height], b.nodes)
}

fn quad(
    b: &mut Builder,
    (hs, he, ws, we): (usize, usize, usize, usize),
    width: usize,
    k: usize,
    latents: usize,
    root: bool,
) -> Vec<usize> {
    if he - hs == 1 && we - ws == 1 {
        let inputs: Vec<usize> = (0..latents).map(|_| b.input(hs * width + ws, k)).collect();
        return if root { vec![b.sum(inputs)] } else { inputs };
    }
    let mut parts = Vec::new();
    for h in halves(hs, he) {
        for w in halves(ws, we) {
            parts.push(quad(b, (h.0, h.1, w.0, w.1), width, k, latents, false));
        }
    }
    let products: Vec<usize> = (0..latents)
        .map(|i| {
            let children = parts.iter().map(|p| p[i]).collect();
            b.push(Node::Product { children })
        })
        .collect();
    let count = if root { 1 } else { latents };
    (0..count).map(|_| b.sum(products.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_mutual_information_equals_the_dense_sum() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let cards = [3usize, 5, 4];
        let data: Vec<Vec<usize>> = (0..40)
            .map(|_| cards.iter().map(|&k| rng.random_range(0..k)).collect())
            .collect();
        let marginals: Vec<Vec<f64>> = (0..3)
            .map(|i| smoothed_marginal(&data, i, cards[i]))
            .collect();
        let log_sums: Vec<f64> = marginals
            .iter()
            .map(|m| m.iter().map(|p| p.ln()).sum())
            .collect();
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            let (ki, kj) = (cards[i], cards[j]);
            let mut c = vec![1.0 / (ki * kj) as f64; ki * kj];
            for row in &data {
                c[row[i] * kj + row[j]] += 1.0;
            }
            let total = data.len() as f64 + 1.0;
            let mut dense = 0.0;
            for a in 0..ki {
                for b in 0..kj {
                    let p = c[a * kj + b] / total;
                    dense += p * (p / (marginals[i][a] * marginals[j][b])).ln();
                }
            }
            let sparse = mutual_information(&data, i, j, &cards, &marginals, &log_sums);
            assert!(
                (sparse - dense).abs() < 1e-12,
                "({i}, {j}): {sparse} vs {dense}"
            );
        }
    }
}
