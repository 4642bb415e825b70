//! `UNet2DModel` against diffusers (tools/reference/make_unet2d_fixtures.py): an ADM-style
//! learned-sigma model (scale-shift modulation, resampling ResNets) and a class-conditional
//! DDPM-style one, on a non-square batch of two at three timesteps; and gradients through the
//! model against finite differences.

use candle_core::{Device, Tensor, Var};
use latentflow_models::unet2d::UNet2DModel;
use latentflow_testutil::{fixtures, load, rel_err};

#[test]
fn adm_and_class_conditional_unets_match_diffusers() {
    let r = load("unet2d-ref/forward.safetensors");
    let adm = UNet2DModel::load(&fixtures().join("tiny-adm")).unwrap();
    assert!(adm.config.learns_variance());
    let class = UNet2DModel::load(&fixtures().join("tiny-unet2d-class")).unwrap();
    for t in [999, 500, 3] {
        let got = class.forward(&r["x"], t as f64, Some(&[3, 1])).unwrap();
        let e = rel_err(&got, &r[&format!("class_t{t}")]);
        assert!(e <= 1e-5, "class-conditional at t = {t}: error {e:e}");
        let got = adm.forward(&r["x"], t as f64, None).unwrap();
        let e = rel_err(&got, &r[&format!("adm_t{t}")]);
        assert!(e <= 1e-5, "ADM at t = {t}: error {e:e}");
    }
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let class = UNet2DModel::load(&fixtures().join("tiny-unet2d-class")).unwrap();
    let x = Tensor::zeros((1, 3, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = class.forward(&x, 10.0, None).unwrap_err().to_string();
    assert!(e.contains("class labels"), "{e}");
    let e = class.forward(&x, 10.0, Some(&[4])).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let odd = Tensor::zeros((1, 3, 15, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = class
        .forward(&odd, 10.0, Some(&[0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 2"), "{e}");
}

#[test]
fn gradients_through_the_model_match_finite_differences() {
    let r = load("unet2d-ref/forward.safetensors");
    let adm = UNet2DModel::load(&fixtures().join("tiny-adm")).unwrap();
    let x = r["x"].narrow(0, 0, 1).unwrap();
    let w = Tensor::ones((1, 6, 16, 24), candle_core::DType::F32, &Device::Cpu).unwrap();
    let f = |x: &Tensor| -> f64 {
        let y = adm.forward(x, 500.0, None).unwrap();
        (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let v = Var::from_tensor(&x).unwrap();
    let y = adm.forward(v.as_tensor(), 500.0, None).unwrap();
    let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(v.as_tensor()).unwrap();
    let d = x.clone();
    let directional = (g * &d)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let h = 1e-2;
    let plus = f(&(&x + (&d * h).unwrap()).unwrap());
    let minus = f(&(&x - (&d * h).unwrap()).unwrap());
    let numeric = (plus - minus) / (2.0 * h);
    let rel = (directional - numeric).abs() / numeric.abs().max(1e-3);
    assert!(
        rel < 2e-2,
        "autograd {directional} vs finite differences {numeric}"
    );
}
