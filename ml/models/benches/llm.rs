//! LLM-connector forward passes on the CPU: a flan-t5-xl-sized T5 encoder on a 128-token prompt
//! in f32 and bf16, one ELLA connector step (batch 2, as with CFG, 128 tokens), and the peak
//! memory of loading the bf16 weights in bf16. Reports the median wall time.
//!
//! Needs the random-weight models of `tools/reference/make_llm_random.py`:
//!   LATENTFLOW_LLM=$PWD/target/llm-random cargo bench -p latentflow-models --bench llm [load]
//! `tools/bench/llm.sh` runs this and the PyTorch reference side by side.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use latentflow_models::ella::Ella;
use latentflow_models::t5::T5Encoder;
use latentflow_testutil::time_forced as time;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's peak resident set (VmHWM), MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let Some(dir) = std::env::var_os("LATENTFLOW_LLM").map(PathBuf::from) else {
        eprintln!("set LATENTFLOW_LLM to the folder of tools/reference/make_llm_random.py");
        return;
    };
    let dev = Device::Cpu;
    let t5_dir = dir.join("flan-t5-xl");
    let mode = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if mode.as_deref() == Some("load") {
        let t0 = Instant::now();
        let m = T5Encoder::load(&t5_dir, None, DType::BF16, &dev).expect("T5");
        println!(
            "load flan-t5-xl bf16    {:8.2} s   peak RSS {:8.0} MiB",
            t0.elapsed().as_secs_f64(),
            peak_mib()
        );
        let ids = Tensor::from_vec((0..128u32).collect::<Vec<_>>(), (1, 128), &dev).expect("ids");
        m.forward(&ids, None).expect("forward");
        println!(
            "  and one forward pass            peak RSS {:8.0} MiB",
            peak_mib()
        );
        return;
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("candle {threads} threads");
    let ids: Vec<u32> = (0..128u32).map(|i| 2 + (i * 7919) % 32000).collect();
    let ids = Tensor::from_vec(ids, (1, 128), &dev).expect("ids");
    let mask = Tensor::ones((1, 128), DType::F32, &dev).expect("mask");
    for (name, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        let m = T5Encoder::load(&t5_dir, None, dtype, &dev).expect("T5");
        let s = time(3, || m.forward(&ids, Some(&mask)).expect("forward"));
        println!("t5 xl 128 tokens {name:4}   {s:8.3} s");
    }
    let ella = Ella::load(&dir.join("ella-sd15-random.safetensors"), 8, &dev).expect("ELLA");
    let feats = Tensor::randn(0f32, 1.0, (2, 128, 2048), &dev).expect("features");
    let s = time(10, || ella.forward(&feats, 500.0).expect("ella"));
    println!("ella step b2 128 tokens  {s:8.4} s");
}
