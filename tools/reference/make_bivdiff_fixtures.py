"""BIVDiff's mixed inversion on tiny models, for tests/e2e/bivdiff.rs.

BIVDiff (MCG-NJU/BIVDiff, `models/mixed_inversion.py` and `models/scheduling_ddim.py`
`reverse_step`) inverts the frame-wise latents twice without guidance, with the empty prompt's
encoding: once with the image UNet on every frame, once with the video UNet, over the DDIM
timesteps in ascending order, and mixes the results. `reverse_step` is three lines; it is
written out here (`reverse_step` below) and driven by diffusers' models: the tiny SD UNet
(tests/fixtures/tiny-sd) as the image model, and the same UNet with the tiny motion adapter
(tests/fixtures/tiny-motion, `UNetMotionModel.from_unet2d`) as the video model.

tests/fixtures/bivdiff-ref/invert.safetensors: `z0` (5 frames 4×12×8), the image inversion
`z_img` (per frame), the video inversion `z_vid` (1×4×5×12×8) and `mixed` at ratio 0.25, with
DDIM (SD's scaled-linear betas, leading spacing) over 10 steps.

Run: tools/reference/.venv/bin/python tools/reference/make_bivdiff_fixtures.py
"""

import pathlib

import diffusers
import torch
from diffusers import DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SD = FIX / "tiny-sd"
OUT = FIX / "bivdiff-ref"
STEPS = 10
RATIO = 0.25


def reverse_step(sched, eps, t, x):
    """BIVDiff's inversion step: x̂0 from ε̂ at t, re-noised with ε̂ to the next level."""
    T = sched.config.num_train_timesteps
    nxt = min(T - 2, int(t) + T // sched.num_inference_steps)
    a_t = sched.alphas_cumprod[int(t)]
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return sched.add_noise(x0, eps, torch.LongTensor([nxt]))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(SD / "unet").eval()
    video = UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(FIX / "tiny-motion")).eval()
    tok = CLIPTokenizer.from_pretrained(SD / "tokenizer")
    enc = CLIPTextModel.from_pretrained(SD / "text_encoder").eval()
    sched = DDIMScheduler.from_pretrained(SD / "scheduler")
    sched.set_timesteps(STEPS)
    frames = 5
    g = torch.Generator().manual_seed(11)
    z0 = torch.randn((frames, 4, 12, 8), generator=g)
    with torch.no_grad():
        ids = tok("", padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        uncond = enc(ids)[0]
        per_frame = uncond.repeat_interleave(frames, dim=0)
        z_img = z0.clone()
        z_vid = z0.permute(1, 0, 2, 3).unsqueeze(0).contiguous()
        for t in sched.timesteps.flip(0):
            z_img = reverse_step(sched, unet(z_img, t, per_frame).sample, t, z_img)
            z_vid = reverse_step(sched, video(z_vid, t, per_frame).sample, t, z_vid)
    gathered = z_img.permute(1, 0, 2, 3).unsqueeze(0)
    mixed = RATIO * gathered + (1 - RATIO) * z_vid
    save_file(
        {
            "z0": z0.contiguous(),
            "z_img": z_img.contiguous(),
            "z_vid": z_vid.contiguous(),
            "mixed": mixed.contiguous(),
        },
        str(OUT / "invert.safetensors"),
        metadata={"diffusers": diffusers.__version__, "steps": str(STEPS), "ratio": str(RATIO)},
    )
    print("timesteps", sched.timesteps.flip(0).tolist(), "max", mixed.abs().max().item())


if __name__ == "__main__":
    main()
