//! Forward plus backward passes and conditional marginals of an image circuit at Tiramisu's
//! size: the quad-tree structure of its released circuits over a 16×16 grid of VQ patches with
//! 1024 codes, soft evidence on every patch, random parameters.
//!
//!   cargo bench -p latentflow-pc --bench circuit [-- LATENTS]     (default 1024)

use std::time::Instant;

use latentflow_pc::evidence::Observation;
use latentflow_pc::structure::quad_tree;
use latentflow_pc::{forward, Evidence, Semantics};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let latents: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let (side, k) = (16, 1024);
    let t0 = Instant::now();
    let c = quad_tree(side, side, k, latents, 0).expect("circuit");
    println!(
        "quad tree {side}x{side}, {k} codes, {latents} latents: {} nodes, {} edges, built in {:.1} s",
        c.nodes().len(),
        c.num_edges(),
        t0.elapsed().as_secs_f64()
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let evidence = Evidence(
        (0..side * side)
            .map(|_| Observation::Soft((0..k).map(|_| rng.random_range(0.0..1.0)).collect()))
            .collect(),
    );
    let mut best = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let t0 = Instant::now();
        let fw = forward(&c, std::slice::from_ref(&evidence)).expect("forward");
        let t1 = Instant::now();
        let flows = fw.backward();
        let t2 = Instant::now();
        let m = flows.marginals(0, Semantics::Flows).expect("marginals");
        let t3 = Instant::now();
        assert_eq!(m.len(), side * side);
        best = (
            best.0.min((t1 - t0).as_secs_f64()),
            best.1.min((t2 - t1).as_secs_f64()),
            best.2.min((t3 - t2).as_secs_f64()),
        );
    }
    println!(
        "forward {:.3} s, backward {:.3} s, marginals {:.3} s (best of 3, batch 1)",
        best.0, best.1, best.2
    );
}
