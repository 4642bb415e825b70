"""An SDXL ControlNet and diffusers' StableDiffusionXLControlNetPipeline run with it, for
tests/e2e/sdxl.rs (graphs/sdxl_controlnet.yaml).

tests/fixtures/tiny-sdxl-controlnet/: ControlNetModel.from_unet(tiny-sdxl's UNet) — the
text_time added conditioning included — with an 8/16-channel conditioning embedding (the tiny
VAE's ×2 downscale) and random, non-zero zero-convolutions so the residuals matter.
tests/fixtures/images/sdxl-control.png: a seeded random 48×32 control image.
tests/fixtures/sdxl-ref/controlnet.safetensors: the pipeline on tiny-sdxl (prompt, no negative:
zeros, guidance 5, 10 Euler steps with leading spacing, 32×48 pixels, conditioning scale 0.8,
guidance window 0.1–0.8), sdxl-ref/pipeline.safetensors's noise: every step's latents, the noise,
the decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_sdxl_controlnet_fixtures.py
"""

import pathlib
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
PROMPT = "a small red house by the sea"


def main():
    base = StableDiffusionXLPipeline.from_pretrained(FIX / "tiny-sdxl", torch_dtype=torch.float32)
    torch.manual_seed(51)
    cn = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16)).eval()
    g = torch.Generator().manual_seed(52)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.01))
    out = FIX / "tiny-sdxl-controlnet"
    shutil.rmtree(out, ignore_errors=True)
    cn.save_pretrained(out, safe_serialization=True)

    rng = np.random.default_rng(53)
    pixels = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(FIX / "images" / "sdxl-control.png")
    image = Image.open(FIX / "images" / "sdxl-control.png").convert("RGB")

    pipe = StableDiffusionXLControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2, unet=base.unet, controlnet=cn, scheduler=base.scheduler,
        force_zeros_for_empty_prompt=True,
    )
    noise = load_file(str(FIX / "sdxl-ref" / "pipeline.safetensors"))["noise"]
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        result = pipe(
            prompt=PROMPT, image=image, height=32, width=48, num_inference_steps=10, guidance_scale=5.0,
            controlnet_conditioning_scale=0.8, control_guidance_start=0.1, control_guidance_end=0.8,
            latents=noise.clone(), output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(result)).float().contiguous(),
        },
        str(FIX / "sdxl-ref" / "controlnet.safetensors"),
        metadata={"prompt": PROMPT, "scale": "0.8", "window": "0.1-0.8", "diffusers": diffusers.__version__},
    )
    plain = load_file(str(FIX / "sdxl-ref" / "pipeline.safetensors"))["latents"]
    print("steps", len(steps), "differs from the plain pipeline by", float((torch.stack(steps) - plain).abs().max()))


if __name__ == "__main__":
    main()
