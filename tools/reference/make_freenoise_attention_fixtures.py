"""FreeNoise's windowed temporal attention from diffusers (`enable_free_noise`, which swaps the
motion modules' blocks for `FreeNoiseTransformerBlock`), for ml/models/tests/animatediff_parity.rs
and tests/e2e/animatediff.rs. Uses the committed tiny models (tests/fixtures/tiny-sd and
tiny-motion, motion_max_seq_length 8), so run make_animatediff_fixtures.py first if those change.

tests/fixtures/animatediff-ref/freenoise_forward.safetensors: `UNetMotionModel` at t = 421 on
2×4×F×12×8 latents (longer than the position table) with two contexts, per setting:
- `pyramid`: 14 frames, windows of 6 every 4 (0-6, 4-10, 8-14: they end on the last frame);
- `pyramid_odd`: 14 frames, windows of 5 every 3 (odd window: weights 1 2 3 2 1);
- `sawtooth`: 14 frames, windows of 6 every 4, delayed_reverse_sawtooth;
- `flat_tail`: 13 frames, windows of 6 every 4: the windows 0-6 and 4-10 leave frames 10-12,
  so a closing window 7-13 adds only those. (Flat weights only: for the closing window diffusers
  adds one weight, not each frame's, to the normaliser, which only flat weights make harmless;
  we add each frame's.)
Keys `x_F`, `context`, and `out_<setting>`.

tests/fixtures/animatediff-ref/freenoise.safetensors: `AnimateDiffPipeline` with
`enable_free_noise(context_length=6, context_stride=4)` (pyramid), DDIM on linear betas, CFG
7.5, 10 steps, 14 frames of 24×16, the noise given (so it is used as it is): every step's
latents, the noise, the decoded frames.

Run: tools/reference/.venv/bin/python tools/reference/make_freenoise_attention_fixtures.py
"""

import json

import diffusers
import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from make_animatediff_fixtures import FIX, REF, SD, generate

SETTINGS = [
    # name, frames, context length, stride, weighting
    ("pyramid", 14, 6, 4, "pyramid"),
    ("pyramid_odd", 14, 5, 3, "pyramid"),
    ("sawtooth", 14, 6, 4, "delayed_reverse_sawtooth"),
    ("flat_tail", 13, 6, 4, "flat"),
]


def main():
    unet = UNet2DConditionModel.from_pretrained(SD / "unet").eval()
    adapter = MotionAdapter.from_pretrained(FIX / "tiny-motion").eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="linspace",
    )
    pipe = AnimateDiffPipeline(
        vae=AutoencoderKL.from_pretrained(SD / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(SD / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(SD / "tokenizer"),
        unet=unet,
        motion_adapter=adapter,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)

    g = torch.Generator().manual_seed(11)
    ctx = torch.randn((2, 7, 32), generator=g)
    xs = {f: torch.randn((2, 4, f, 12, 8), generator=g) for f in sorted({s[1] for s in SETTINGS})}
    out = {"context": ctx, **{f"x_{f}": x for f, x in xs.items()}}
    with torch.no_grad():
        for name, frames, length, stride, weighting in SETTINGS:
            pipe.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=weighting)
            x = xs[frames]
            per_frame = ctx.repeat_interleave(repeats=frames, dim=0)
            out[f"out_{name}"] = pipe.unet(x, 421, per_frame).sample.contiguous()
            pipe.disable_free_noise()
    save_file(out, str(REF / "freenoise_forward.safetensors"), metadata={"t": "421", "diffusers": diffusers.__version__})
    print("forward", [s[0] for s in SETTINGS])

    pipe.enable_free_noise(context_length=6, context_stride=4, weighting_scheme="pyramid")
    noise = torch.randn((1, 4, 14, 12, 8), generator=torch.Generator().manual_seed(23))
    generate(pipe, "freenoise", noise, 10, num_frames=14, metadata={"scheduler": json.dumps(dict(scheduler.config))})


if __name__ == "__main__":
    main()
