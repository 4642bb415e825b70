//! Every WGSL kernel against the f32 CPU path (candle and LatentFlow's CPU kernels), on the real
//! device service (lavapipe in CI; these fail, never skip, without an adapter).
//!
//! Bound: the largest difference is at most `TOL` (element-wise maps, products) or `TOL_REDUCE`
//! (softmax, GroupNorm, attention) times the largest magnitude of the CPU result: the GPU sums in
//! another order and has its own exp. Measured on lavapipe: at most 5.5e-7.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor as CTensor};
use latentflow_gpu::{OpenOptions, Service};
use latentflow_plugin_api::{ErrorKind, Tensor};
use latentflow_wgsl::{Binary, Gpu, Unary};
use rand::{Rng, SeedableRng};

const TOL: f32 = 1e-6;
const TOL_REDUCE: f32 = 2e-6;

fn gpu() -> Gpu {
    static SERVICE: OnceLock<std::sync::Arc<Service>> = OnceLock::new();
    let s = SERVICE.get_or_init(|| match Service::open(&OpenOptions::from_env()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    });
    Gpu::new(s.handle())
}

fn random(n: usize, seed: u64, range: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-range..range)).collect()
}

fn on_gpu(g: &Gpu, v: &[f32], shape: &[usize]) -> Tensor {
    g.upload(&Tensor::from_vec(v.to_vec(), shape).unwrap())
        .unwrap()
}

fn back(g: &Gpu, t: &Tensor) -> Vec<f32> {
    g.download(t).unwrap().to_f32_vec().unwrap()
}

fn candle(v: &[f32], shape: &[usize]) -> CTensor {
    CTensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

fn flat(t: &CTensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max difference {worst:e} over {:e} (= {tol:e} × {scale:e})",
        tol * scale
    );
}

#[test]
fn upload_and_download_keep_every_bit() {
    let g = gpu();
    let v = random(1001, 1, 100.0);
    let t = on_gpu(&g, &v, &[7, 11, 13]);
    assert_eq!(t.device().device_type, 15);
    assert_eq!(t.shape(), vec![7, 11, 13]);
    assert_eq!(back(&g, &t), v);
}

#[test]
fn unary_maps_match_candle() {
    let g = gpu();
    let shape = [3, 5, 67];
    let v = random(3 * 5 * 67, 2, 6.0);
    let x = on_gpu(&g, &v, &shape);
    let c = candle(&v, &shape);
    let cases: Vec<(Unary, CTensor, f32)> = vec![
        (Unary::Silu, candle_nn::ops::silu(&c).unwrap(), TOL),
        (Unary::Gelu, c.gelu_erf().unwrap(), TOL),
        (Unary::GeluTanh, c.gelu().unwrap(), TOL),
        (Unary::Exp, c.exp().unwrap(), TOL),
        (Unary::Tanh, c.tanh().unwrap(), TOL),
        (Unary::Sigmoid, candle_nn::ops::sigmoid(&c).unwrap(), TOL),
        (
            Unary::Affine {
                scale: 0.18215,
                shift: -1.5,
            },
            c.affine(0.18215, -1.5).unwrap(),
            TOL,
        ),
    ];
    for (op, want, tol) in cases {
        let got = g.unary(&x, op).unwrap();
        assert_eq!(got.shape(), shape.to_vec());
        close(&format!("{op:?}"), &back(&g, &got), &flat(&want), tol);
    }
}

#[test]
fn binary_maps_match_candle() {
    let g = gpu();
    let shape = [4, 300];
    let (va, vb) = (random(1200, 3, 3.0), random(1200, 4, 3.0));
    let (a, b) = (on_gpu(&g, &va, &shape), on_gpu(&g, &vb, &shape));
    let (ca, cb) = (candle(&va, &shape), candle(&vb, &shape));
    let cases = [
        (Binary::Add, (&ca + &cb).unwrap()),
        (Binary::Sub, (&ca - &cb).unwrap()),
        (Binary::Mul, (&ca * &cb).unwrap()),
        (Binary::Div, (&ca / &cb).unwrap()),
        (
            Binary::Mix {
                alpha: 0.25,
                beta: -2.0,
            },
            ((&ca * 0.25).unwrap() + (&cb * -2.0).unwrap()).unwrap(),
        ),
    ];
    for (op, want) in cases {
        let got = g.binary(&a, &b, op).unwrap();
        close(&format!("{op:?}"), &back(&g, &got), &flat(&want), TOL);
    }
    let other = on_gpu(&g, &va[..600], &[2, 300]);
    let e = g.binary(&a, &other, Binary::Add).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
    assert!(e.message.contains("[4, 300]"), "{}", e.message);
}

#[test]
fn softmax_matches_candle_on_rows_longer_and_shorter_than_a_workgroup() {
    let g = gpu();
    for (shape, scale) in [
        ([2usize, 3, 7], 1.0f32),
        ([3, 2, 700], 0.125),
        ([1, 1, 256], 3.0),
    ] {
        let n = shape.iter().product();
        let v = random(n, 5, 8.0);
        let got = g.softmax(&on_gpu(&g, &v, &shape), scale).unwrap();
        let want =
            candle_nn::ops::softmax_last_dim(&(candle(&v, &shape) * f64::from(scale)).unwrap())
                .unwrap();
        close(
            &format!("softmax {shape:?}"),
            &back(&g, &got),
            &flat(&want),
            TOL_REDUCE,
        );
    }
}

fn group_norm_cpu(c: usize, groups: usize, w: &[f32], b: &[f32]) -> latentflow_kernels::GroupNorm {
    let mut map = HashMap::new();
    map.insert("weight".to_string(), candle(w, &[c]));
    map.insert("bias".to_string(), candle(b, &[c]));
    let vb = candle_nn::VarBuilder::from_tensors(map, candle_core::DType::F32, &Device::Cpu);
    latentflow_kernels::GroupNorm::new(groups, c, 1e-6, vb).unwrap()
}

#[test]
fn group_norm_matches_the_cpu_kernel_with_and_without_silu() {
    use candle_core::Module;
    let g = gpu();
    let (n, c, h, wd, groups) = (2, 64, 9, 11, 32);
    let shape = [n, c, h, wd];
    // Offset values: a non-zero mean is where one-pass variance loses digits.
    let v: Vec<f32> = random(n * c * h * wd, 6, 2.0)
        .iter()
        .map(|x| x + 5.0)
        .collect();
    let (w, b) = (random(c, 7, 1.5), random(c, 8, 0.5));
    let cpu = group_norm_cpu(c, groups, &w, &b);
    let x = on_gpu(&g, &v, &shape);
    let (gw, gb) = (on_gpu(&g, &w, &[c]), on_gpu(&g, &b, &[c]));
    let cx = candle(&v, &shape);
    let plain = g
        .group_norm(&x, groups, 1e-6, Some((&gw, &gb)), false)
        .unwrap();
    close(
        "group_norm",
        &back(&g, &plain),
        &flat(&cpu.forward(&cx).unwrap()),
        TOL_REDUCE,
    );
    let silu = g
        .group_norm(&x, groups, 1e-6, Some((&gw, &gb)), true)
        .unwrap();
    close(
        "group_norm+silu",
        &back(&g, &silu),
        &flat(&cpu.forward_silu(&cx).unwrap()),
        TOL_REDUCE,
    );
    // Without the affine: γ = 1, β = 0.
    let unit = group_norm_cpu(c, groups, &vec![1.0; c], &vec![0.0; c]);
    let bare = g.group_norm(&x, groups, 1e-6, None, false).unwrap();
    close(
        "group_norm (no affine)",
        &back(&g, &bare),
        &flat(&unit.forward(&cx).unwrap()),
        TOL_REDUCE,
    );
    // 64 channels do not split into 12 groups.
    let e = g.group_norm(&x, 12, 1e-6, None, false).unwrap_err();
    assert!(e.message.contains("12 groups"), "{}", e.message);
}

#[test]
fn matmul_matches_candle_plain_and_transposed() {
    let g = gpu();
    let (bt, m, k, n) = (3, 37, 53, 29);
    let va = random(bt * m * k, 9, 1.0);
    let vb = random(bt * k * n, 10, 1.0);
    let a = on_gpu(&g, &va, &[bt, m, k]);
    let b = on_gpu(&g, &vb, &[bt, k, n]);
    let (ca, cb) = (candle(&va, &[bt, m, k]), candle(&vb, &[bt, k, n]));
    let got = g.matmul(&a, &b, false, 0.5).unwrap();
    assert_eq!(got.shape(), vec![bt, m, n]);
    let want = (ca.matmul(&cb).unwrap() * 0.5).unwrap();
    close("matmul", &back(&g, &got), &flat(&want), TOL);
    // bᵀ given as N×K.
    let cbt = cb.transpose(1, 2).unwrap().contiguous().unwrap();
    let bt_gpu = on_gpu(&g, &flat(&cbt), &[bt, n, k]);
    let got_t = g.matmul(&a, &bt_gpu, true, 0.5).unwrap();
    close("matmul (bᵀ)", &back(&g, &got_t), &flat(&want), TOL);
    // 2-D operands, no batch.
    let a2 = on_gpu(&g, &va[..m * k], &[m, k]);
    let b2 = on_gpu(&g, &vb[..k * n], &[k, n]);
    let want2 = candle(&va[..m * k], &[m, k])
        .matmul(&candle(&vb[..k * n], &[k, n]))
        .unwrap();
    close(
        "matmul 2-D",
        &back(&g, &g.matmul(&a2, &b2, false, 1.0).unwrap()),
        &flat(&want2),
        TOL,
    );
    let e = g.matmul(&a, &a, false, 1.0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
}

#[test]
fn attention_matches_the_cpu_kernel() {
    let g = gpu();
    // SD 1.5's first attention at a 16×16 latent: 8 heads of 40, 256 queries, 77 keys (cross).
    let (bh, lq, lk, d) = (8, 256, 77, 40);
    let (vq, vk, vv) = (
        random(bh * lq * d, 11, 1.0),
        random(bh * lk * d, 12, 1.0),
        random(bh * lk * d, 13, 1.0),
    );
    let scale = 1.0 / (d as f32).sqrt();
    let got = g
        .attention(
            &on_gpu(&g, &vq, &[bh, lq, d]),
            &on_gpu(&g, &vk, &[bh, lk, d]),
            &on_gpu(&g, &vv, &[bh, lk, d]),
            scale,
        )
        .unwrap();
    let q = (candle(&vq, &[1, bh, lq, d]) * f64::from(scale)).unwrap();
    let want = latentflow_kernels::attention(
        &q,
        &candle(&vk, &[1, bh, lk, d]),
        &candle(&vv, &[1, bh, lk, d]),
        Default::default(),
    )
    .unwrap();
    close("attention", &back(&g, &got), &flat(&want), TOL_REDUCE);
}

#[test]
fn more_elements_than_one_dispatch_row_take_a_second_dimension() {
    let g = gpu();
    // 65535 workgroups of 256 are 16 776 960 elements; go past them.
    let n = 65535 * 256 + 1000;
    let v: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.01 - 5.0).collect();
    let got = back(&g, &g.unary(&on_gpu(&g, &v, &[n]), Unary::Sigmoid).unwrap());
    for i in [0, 1, 65535 * 256 - 1, 65535 * 256, n - 1] {
        let want = 1.0 / (1.0 + (-v[i]).exp());
        assert!(
            (got[i] - want).abs() < 1e-6,
            "element {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn cpu_tensors_are_refused_with_a_hint() {
    let g = gpu();
    let cpu = Tensor::from_vec(vec![1.0f32; 4], &[4]).unwrap();
    let e = g.unary(&cpu, Unary::Silu).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
    assert!(e.message.contains("gpu.upload"), "{}", e.message);
    let e = g.download(&cpu).unwrap_err();
    assert!(e.message.contains("not on the GPU"), "{}", e.message);
}
