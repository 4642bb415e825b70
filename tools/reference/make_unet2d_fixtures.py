"""Tiny diffusers `UNet2DModel`s and their parity fixture (pixel-space denoisers: DDPM's UNet
and ADM, guided-diffusion's, as diffusers writes it).

Builds, with seeded random weights (norms included):

* tests/fixtures/tiny-adm/: ADM-style, `learn_sigma` (6 channels out), `scale_shift` time
  modulation, resampling ResNets (`resblock_updown`), attention at the two deeper levels, an
  attention norm in the mid block;
* tests/fixtures/tiny-unet2d-class/: DDPM-style, `default` time mode, strided-convolution and
  nearest+conv resampling, a class embedding of 4 labels, `freq_shift` 1, sines first;

and records in tests/fixtures/unet2d-ref/forward.safetensors the outputs for a non-square
batch of two at three timesteps.

Run: tools/reference/.venv/bin/python tools/reference/make_unet2d_fixtures.py
"""

import pathlib

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DModel

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    return model.eval()


def adm():
    return randomise(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=8,
        norm_num_groups=8, attn_norm_num_groups=8, resnet_time_scale_shift="scale_shift",
        downsample_type="resnet", upsample_type="resnet", flip_sin_to_cos=True, freq_shift=0,
    ), 0)


def class_conditional():
    return randomise(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=2, attention_head_dim=None,
        norm_num_groups=8, num_class_embeds=4, flip_sin_to_cos=False, freq_shift=1,
    ), 1)


def main():
    out = {}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 24, generator=g)
    out["x"] = x
    for name, model in [("adm", adm()), ("class", class_conditional())]:
        model.save_pretrained(ROOT / f"tiny-{'adm' if name == 'adm' else 'unet2d-class'}",
                              safe_serialization=True)
        labels = torch.tensor([3, 1]) if name == "class" else None
        with torch.no_grad():
            for t in (999, 500, 3):
                out[f"{name}_t{t}"] = model(x, t, class_labels=labels).sample.contiguous()
    (ROOT / "unet2d-ref").mkdir(exist_ok=True)
    save_file(out, str(ROOT / "unet2d-ref" / "forward.safetensors"),
              metadata={"diffusers": diffusers.__version__, "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
