"""ControlNet guess mode on a video, for tests/e2e/animatediff.rs: tests/fixtures/animatediff-ref/
controlnet_guess.safetensors, `AnimateDiffControlNetPipeline(guess_mode=True)` on the committed
tiny models with the control frames of make_animatediff_fixtures.py, DDIM on linear betas, CFG
7.5, 6 steps.

diffusers' video pipeline runs the ControlNet on the conditional half only, as guess mode means,
but then hands the UNet residuals for that half alone and fails on the shape (2.x/0.42: "The size
of tensor a (10) must match the size of tensor b (5)"). Its image pipeline gives the
unconditional half zero residuals (`torch.cat([torch.zeros_like(d), d])`); the ControlNet's
forward is wrapped here to do the same, which is the semantics our `sd.apply_controlnet` has.

Run: tools/reference/.venv/bin/python tools/reference/make_animatediff_guess_fixtures.py
(after make_animatediff_fixtures.py, whose models and control frames it uses)
"""

import json

import PIL.Image
import torch
from diffusers import (
    AnimateDiffControlNetPipeline,
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from make_animatediff_fixtures import FIX, REF, SD, generate


def main():
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
    controlnet = ControlNetModel.from_pretrained(FIX / "tiny-controlnet").eval()
    inner = controlnet.forward

    def padded(*args, guess_mode=False, **kw):
        down, mid = inner(*args, guess_mode=guess_mode, **kw)
        if guess_mode:
            down = tuple(torch.cat([torch.zeros_like(d), d]) for d in down)
            mid = torch.cat([torch.zeros_like(mid), mid])
        return down, mid

    controlnet.forward = padded
    pipe = AnimateDiffControlNetPipeline(
        vae=AutoencoderKL.from_pretrained(SD / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(SD / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(SD / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(SD / "unet").eval(),
        motion_adapter=MotionAdapter.from_pretrained(FIX / "tiny-motion").eval(),
        controlnet=controlnet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    images = [PIL.Image.open(REF / "control" / f"frame{i}.png").convert("RGB") for i in range(5)]
    noise = torch.randn((1, 4, 5, 12, 8), generator=torch.Generator().manual_seed(99))
    generate(
        pipe,
        "controlnet_guess",
        noise,
        6,
        metadata={"scheduler": json.dumps(dict(scheduler.config)), "guess_mode": "true"},
        conditioning_frames=images,
        guess_mode=True,
    )


if __name__ == "__main__":
    main()
