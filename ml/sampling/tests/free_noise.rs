//! FreeNoise's noise rearrangement against diffusers' `_prepare_latents_free_noise`
//! (tools/reference/make_freenoise_fixtures.py), replaying the permutations it drew.

use latentflow_sampling::free_noise::{free_noise, FreeNoiseKind};
use latentflow_testutil::{load, rel_err};

#[test]
fn shuffled_and_repeated_context_equal_diffusers() {
    let r = load("video-ref/free_noise.safetensors");
    let mut perms: Vec<Vec<usize>> = (0..)
        .map_while(|i| r.get(&format!("perm{i}")))
        .map(|t| {
            t.to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|v| v as usize)
                .collect()
        })
        .collect();
    assert_eq!(perms.len(), 5, "windows at 8, 11, 14, 17, 20");
    perms.reverse();
    let got = free_noise(&r["noise"], FreeNoiseKind::ShuffleContext, 8, 3, &mut |n| {
        let p = perms.pop().unwrap();
        assert_eq!(p.len(), n);
        p
    })
    .unwrap();
    assert_eq!(rel_err(&got, &r["shuffled"]), 0.0);
    assert!(perms.is_empty(), "every window drew one permutation");
    let got = free_noise(
        &r["noise"],
        FreeNoiseKind::RepeatContext,
        8,
        3,
        &mut |_| vec![],
    )
    .unwrap();
    assert_eq!(rel_err(&got, &r["repeated"]), 0.0);
    // The first window is untouched; a bad permutation is refused.
    let first = got.narrow(2, 0, 8).unwrap();
    assert_eq!(rel_err(&first, &r["noise"].narrow(2, 0, 8).unwrap()), 0.0);
    let e = free_noise(&r["noise"], FreeNoiseKind::ShuffleContext, 8, 3, &mut |n| {
        vec![0; n]
    });
    assert!(e.is_err());
}
