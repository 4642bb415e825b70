//! The two-pass queries against brute-force enumeration over every assignment, on random tiny
//! circuits of every structure with hard, soft and missing evidence mixed; EM's monotonicity;
//! the file format.

use latentflow_pc::evidence::Observation;
use latentflow_pc::learn::em;
use latentflow_pc::structure::{chow_liu_tree, hclt, mixture, poon_domingos, quad_tree};
use latentflow_pc::{conditional, format, forward, Circuit, Evidence, Node, Semantics};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Node values in linear space by plain recursion over the node list, with the value of one
/// input node optionally overridden: an evaluator independent of the log-space passes.
fn naive(c: &Circuit, e: &Evidence, over: Option<(usize, f64)>) -> f64 {
    let mut v = vec![0f64; c.nodes().len()];
    for (n, node) in c.nodes().iter().enumerate() {
        v[n] = match over {
            Some((m, x)) if m == n => x,
            _ => match node {
                Node::Input { var, probs } => probs
                    .iter()
                    .enumerate()
                    .map(|(k, p)| p * e.weight(*var, k))
                    .sum(),
                Node::Product { children } => children.iter().map(|&ch| v[ch]).product(),
                Node::Sum { children, weights } => {
                    children.iter().zip(weights).map(|(&ch, w)| w * v[ch]).sum()
                }
            },
        };
    }
    v[c.root()]
}

/// Every assignment of the circuit's variables.
fn assignments(cards: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &k in cards {
        out = out
            .into_iter()
            .flat_map(|a| {
                (0..k).map(move |v| {
                    let mut a = a.clone();
                    a.push(v);
                    a
                })
            })
            .collect();
    }
    out
}

fn random_evidence(rng: &mut ChaCha8Rng, cards: &[usize]) -> Evidence {
    Evidence(
        cards
            .iter()
            .map(|&k| match rng.random_range(0..3) {
                0 => Observation::Missing,
                1 => Observation::Value(rng.random_range(0..k)),
                _ => Observation::Soft((0..k).map(|_| rng.random_range(0.0..1.0)).collect()),
            })
            .collect(),
    )
}

fn circuits(rng: &mut ChaCha8Rng) -> Vec<(String, Circuit)> {
    let mut out = Vec::new();
    for seed in 0..4u64 {
        let n = rng.random_range(2..=6);
        let cards: Vec<usize> = (0..n).map(|_| rng.random_range(2..=4)).collect();
        out.push((
            format!("mixture {cards:?}"),
            mixture(&cards, 3, seed).unwrap(),
        ));
        let parents: Vec<Option<usize>> = (0..n)
            .map(|v| (v > 0).then(|| rng.random_range(0..v)))
            .collect();
        out.push((
            format!("hclt {parents:?}"),
            hclt(&parents, &cards, 2, seed).unwrap(),
        ));
    }
    out.push(("pd 2x3".into(), poon_domingos(3, 2, 3, &[1], 2, 7).unwrap()));
    out.push((
        "pd 3x2 delta 2".into(),
        poon_domingos(2, 3, 2, &[2], 3, 8).unwrap(),
    ));
    out.push(("quad tree 3x2".into(), quad_tree(3, 2, 3, 2, 9).unwrap()));
    out
}

#[test]
fn forward_and_both_conditionals_equal_enumeration() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (name, c) in circuits(&mut rng) {
        let cards = c.cards().to_vec();
        let all = assignments(&cards);
        let evidence: Vec<Evidence> = (0..5).map(|_| random_evidence(&mut rng, &cards)).collect();
        let fw = forward(&c, &evidence).unwrap();
        let flows = fw.backward();
        for (b, e) in evidence.iter().enumerate() {
            // Z by enumeration: Σ_z Π_i e_i(z_i) p(z).
            let mut z = 0.0;
            let mut post: Vec<Vec<f64>> = cards.iter().map(|&k| vec![0.0; k]).collect();
            for a in &all {
                let w: f64 = a.iter().enumerate().map(|(i, &v)| e.weight(i, v)).product();
                let p = naive(&c, &Evidence::values(a), None);
                z += w * p;
                for (i, &v) in a.iter().enumerate() {
                    post[i][v] += w * p;
                }
            }
            let ours = fw.log_z()[b].exp();
            assert!(
                (ours - z).abs() <= 1e-9 * z.max(1e-300),
                "{name}: Z {ours} vs {z}"
            );
            let bayes = flows.marginals(b, Semantics::Posterior).unwrap();
            for (i, row) in post.iter().enumerate() {
                for (v, p) in row.iter().enumerate() {
                    assert!(
                        (bayes[i][v] - p / z).abs() <= 1e-6,
                        "{name}: posterior z{i}={v}"
                    );
                }
            }
            // pyjuice's semantics: r_i(c) ∝ Σ_n F_n θ_{n,c}, F_n = v_n ∂Z/∂v_n / Z, where Z is
            // linear in each input's value: ∂Z/∂v_n = Z(v_n = 1) − Z(v_n = 0).
            let mut r: Vec<Vec<f64>> = cards.iter().map(|&k| vec![0.0; k]).collect();
            for (n, node) in c.nodes().iter().enumerate() {
                if let Node::Input { var, probs } = node {
                    let v: f64 = probs
                        .iter()
                        .enumerate()
                        .map(|(k, p)| p * e.weight(*var, k))
                        .sum();
                    let dz = naive(&c, e, Some((n, 1.0))) - naive(&c, e, Some((n, 0.0)));
                    let f = v * dz / z;
                    assert!(
                        (flows.flow(n, b) - f).abs() <= 1e-6,
                        "{name}: flow of node {n}"
                    );
                    for (k, p) in probs.iter().enumerate() {
                        r[*var][k] += f * p;
                    }
                }
            }
            let ours = flows.marginals(b, Semantics::Flows).unwrap();
            for (i, row) in r.iter().enumerate() {
                let s: f64 = row.iter().sum();
                for (v, x) in row.iter().enumerate() {
                    assert!((ours[i][v] - x / s).abs() <= 1e-6, "{name}: flows z{i}={v}");
                }
                assert!((ours[i].iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!((bayes[i].iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        // Normalised: nothing known sums to 1.
        let none = forward(&c, &[Evidence::missing(cards.len())]).unwrap();
        assert!(none.log_z()[0].abs() < 1e-12, "{name}: Z with no evidence");
    }
}

#[test]
fn impossible_evidence_is_an_error_not_a_nan() {
    let c = mixture(&[2, 2], 2, 0).unwrap();
    let e = Evidence(vec![
        Observation::Soft(vec![0.0, 0.0]),
        Observation::Missing,
    ]);
    let err = conditional(&c, &[e], Semantics::Posterior)
        .unwrap_err()
        .to_string();
    assert!(err.contains("probability 0"), "{err}");
    let wrong = Evidence(vec![Observation::Value(5), Observation::Missing]);
    assert!(forward(&c, &[wrong]).is_err());
}

#[test]
fn em_never_decreases_the_likelihood() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let cards = vec![3, 2, 4, 3, 2];
    // Data from a "true" circuit's structure family but other parameters, some entries missing.
    let truth = hclt(&[None, Some(0), Some(0), Some(2), Some(1)], &cards, 3, 99).unwrap();
    let all = assignments(&cards);
    let probs: Vec<f64> = all
        .iter()
        .map(|a| naive(&truth, &Evidence::values(a), None))
        .collect();
    let sample = |rng: &mut ChaCha8Rng| {
        let u: f64 = rng.random_range(0.0..1.0);
        let mut acc = 0.0;
        for (a, p) in all.iter().zip(&probs) {
            acc += p;
            if u <= acc {
                return a.clone();
            }
        }
        all[all.len() - 1].clone()
    };
    let rows: Vec<Vec<usize>> = (0..300).map(|_| sample(&mut rng)).collect();
    let data: Vec<Evidence> = rows
        .iter()
        .map(|r| {
            Evidence(
                r.iter()
                    .map(|&v| {
                        if rng.random_range(0.0..1.0) < 0.2 {
                            Observation::Missing
                        } else {
                            Observation::Value(v)
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    for (name, start) in [
        ("mixture", mixture(&cards, 4, 1).unwrap()),
        (
            "hclt",
            hclt(&chow_liu_tree(&rows, &cards).unwrap(), &cards, 3, 2).unwrap(),
        ),
    ] {
        let (fitted, lls) = em(&start, &data, 12, 0.0).unwrap();
        for w in lls.windows(2) {
            assert!(
                w[1] >= w[0] - 1e-9,
                "{name}: likelihood fell {} → {}",
                w[0],
                w[1]
            );
        }
        assert!(
            lls[lls.len() - 1] > lls[0] + 0.05,
            "{name}: EM learned nothing: {lls:?}"
        );
        assert!(fitted.num_edges() == start.num_edges());
    }
}

#[test]
fn the_file_format_round_trips_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = poon_domingos(3, 2, 3, &[1], 2, 3).unwrap();
    let e = vec![Evidence::values(&[0, 1, 2, 0, 1, 2])];
    let want = forward(&c, &e).unwrap().log_z()[0];
    let p64 = dir.path().join("c64.safetensors");
    format::save(&c, &p64, true).unwrap();
    let back = format::load(&p64).unwrap();
    assert_eq!(back.nodes(), c.nodes());
    let p32 = dir.path().join("c32.safetensors");
    format::save(&c, &p32, false).unwrap();
    let got = forward(&format::load(&p32).unwrap(), &e).unwrap().log_z()[0];
    assert!((got - want).abs() < 1e-5, "f32 parameters: {got} vs {want}");
    // Not a circuit file, and a structure whose sizes disagree with the tensors.
    let plain = dir.path().join("plain.safetensors");
    let data = vec![0u8; 8];
    let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    safetensors::serialize_to_file(vec![("x", v)], None, &plain).unwrap();
    let err = format::load(&plain).unwrap_err().to_string();
    assert!(err.contains("not a latentflow-pc-v1 circuit"), "{err}");
    let small = mixture(&[2, 2], 2, 0).unwrap();
    let other = dir.path().join("other.safetensors");
    format::save(&small, &other, true).unwrap();
    // Swap in the PD structure's metadata over the mixture's tensors.
    let bytes = std::fs::read(&other).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let big_bytes = std::fs::read(&p64).unwrap();
    let (_, big_meta) = safetensors::SafeTensors::read_metadata(&big_bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().collect();
    let forged = dir.path().join("forged.safetensors");
    safetensors::serialize_to_file(tensors, big_meta.metadata().clone(), &forged).unwrap();
    let err = format::load(&forged).unwrap_err().to_string();
    assert!(err.contains("the structure needs"), "{err}");
    assert!(format::load(dir.path()).is_err(), "a folder");
}
