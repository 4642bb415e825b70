"""Reference for the out-of-tree example plugin `examples/cfg-rescale`: diffusers'
StableDiffusionPipeline with `guidance_rescale=0.7` (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", §3.4: `rescale_noise_cfg`) on the tiny pipeline, a
10-step DDIM loop with CFG 7.5, recording every step's latent, the decoded image and the noise.

Run after make_sd_fixtures.py:
    tools/reference/.venv/bin/python tools/reference/make_cfg_rescale_fixture.py
"""

import pathlib
import sys

import torch
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_scheduler_fixtures import make  # noqa: E402
from make_sd_fixtures import H, TINY, W, run_pipe  # noqa: E402


def main():
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(TINY, torch_dtype=torch.float32, safety_checker=None)
    pipe.text_encoder.float()
    pipe.scheduler = make("ddim")
    run_pipe(pipe, "cfg_rescale", {}, height=H * 2, width=W * 2, guidance_rescale=0.7)


if __name__ == "__main__":
    main()
