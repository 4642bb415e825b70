"""The diffusers side of the tiny txt2img benchmark (tools/bench/tiny_txt2img.sh): a 20-step
txt2img (DDIM, CFG 7.5) on a tiny diffusers folder, f32, timed after one warm-up run.

    tools/reference/.venv/bin/python tools/reference/bench_tiny.py MODEL WIDTH HEIGHT THREADS [RUNS]
"""

import sys
import time

import torch
from bench_sd15 import timed
from diffusers import DDIMScheduler, StableDiffusionPipeline


def main():
    path, width, height, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0

    def once():
        with torch.inference_mode():
            pipe("a red circle on a blue background", negative_prompt="", num_inference_steps=20,
                 guidance_scale=7.5, height=height, width=width, generator=torch.Generator().manual_seed(0))

    t = timed(runs, once)
    print(f"diffusers  load {load:.3f} s  pipeline (encode + 20 steps + decode) median {t:.3f} s"
          f"  ({runs} runs after a warm-up, torch {torch.__version__}, {threads} threads)")


if __name__ == "__main__":
    main()
