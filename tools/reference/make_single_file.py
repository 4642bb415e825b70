"""Writes a diffusers SD 1.x pipeline folder as one LDM-layout single-file checkpoint.

    tools/reference/.venv/bin/python tools/reference/make_single_file.py DIFFUSERS_DIR OUT.safetensors

Uses the same key mapping as the tiny fixture (make_sd_fixtures.py), then reloads the UNet with
diffusers' own `from_single_file` to check it. Used to test LatentFlow's checkpoint loader at the
real SD 1.5 sizes without downloading a checkpoint.
"""

import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from make_sd_fixtures import unet_to_ldm, vae_to_ldm


def main(src, out):
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
    enc = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
    sd = unet_to_ldm(unet.state_dict(), dict(unet.config), dtype=torch.float16)
    sd.update({k: v.half() for k, v in vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)).items()})
    for k, v in enc.state_dict().items():
        k = k if k.startswith("text_model.") else "text_model." + k
        sd["cond_stage_model.transformer." + k] = v.half()
    save_file({k: v.contiguous() for k, v in sd.items()}, out)
    back = UNet2DConditionModel.from_single_file(out, config=src, subfolder="unet", torch_dtype=torch.float32)
    ref = unet.state_dict()
    worst = max((back.state_dict()[k] - ref[k].half().float()).abs().max().item() for k in ref)
    print("wrote", out, "- diffusers reloads the UNet, max weight difference", worst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
