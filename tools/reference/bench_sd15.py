"""The PyTorch side of the SD 1.5-sized CPU benchmark (see ml/models/benches/sd15.rs).

    tools/reference/.venv/bin/python tools/reference/bench_sd15.py target/sd15-random [threads]
    tools/reference/.venv/bin/python tools/reference/bench_sd15.py target/sd15-random 2 txt2img
    tools/reference/.venv/bin/python tools/reference/bench_sd15.py target/sd15-random 2 bf16
The second form runs a 20-step 512×512 txt2img (DDIM, CFG 7.5) for the peak-RSS comparison; the
third times the UNet step with the UNet stored in bf16 and bf16 inputs (`unet.to(torch.bfloat16)`,
what a PyTorch user of a CPU with AVX512-BF16 or AMX does).
"""

import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


def timed(n, f):
    f()
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main():
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    f32 = dict(torch_dtype=torch.float32)
    if len(sys.argv) > 3 and sys.argv[3] == "txt2img":
        pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False, **f32)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=20, guidance_scale=7.5,
                 height=512, width=512, generator=torch.Generator().manual_seed(0))
        print(f"txt2img 512 20 steps   {time.perf_counter() - t0:8.1f} s")
        return
    if len(sys.argv) > 3 and sys.argv[3] == "bf16":
        with torch.inference_mode():
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.bfloat16).eval()
            ctx = torch.randn(2, 77, 768, dtype=torch.bfloat16)
            for size, n in ((32, 3), (64, 2)):
                x = torch.randn(2, 4, size, size, dtype=torch.bfloat16)
                s = timed(n, lambda: unet(x, 500, encoder_hidden_states=ctx).sample)
                print(f"unet step {size}x{size} b2 bf16 {s:8.3f} s")
        return
    print(f"torch {torch.__version__} {threads} threads")
    with torch.inference_mode():
        tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **f32).eval()

        def encode():
            ids = tok("a photograph of an astronaut riding a horse", padding="max_length", max_length=77,
                      return_tensors="pt").input_ids
            return te(ids)[0]

        print(f"text encode            {timed(5, encode):8.3f} s")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **f32).eval()
        ctx = torch.randn(2, 77, 768)
        for size, n in ((32, 3), (64, 2)):
            x = torch.randn(2, 4, size, size)
            s = timed(n, lambda: unet(x, 500, encoder_hidden_states=ctx).sample)
            print(f"unet step {size}x{size} b2     {s:8.3f} s")
        del unet
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **f32).eval()
        z = torch.randn(1, 4, 64, 64)
        print(f"vae decode 64x64       {timed(1, lambda: vae.decode(z).sample):8.3f} s")


if __name__ == "__main__":
    main()
