"""Tiny AutoencoderKL parity fixtures from diffusers.

Builds a random-weight AutoencoderKL from an explicit small config (seeded), saves it in diffusers
layout under tests/fixtures/tiny-sd/vae/, and records, for a non-square input, the raw decoder
output of a latent and the encoder's posterior mean of an image (no scaling factor applied:
network-level parity).

Run: tools/reference/.venv/bin/python tools/reference/make_vae_fixtures.py
"""

import pathlib

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-sd"


def main():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    ).eval()
    # Random init leaves some weights at zero or one; perturb every tensor so each one matters.
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(ROOT / "vae", safe_serialization=True)

    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 6, 8, generator=g)
    image = torch.rand(1, 3, 12, 16, generator=g) * 2 - 1
    with torch.no_grad():
        decoded = vae.decode(latent).sample
        mean = vae.encode(image).latent_dist.mean
    save_file(
        {"latent": latent, "decoded": decoded.contiguous(), "image": image, "encoded_mean": mean.contiguous()},
        str(ROOT / "vae_io.safetensors"),
        metadata={"scaling_factor": "0.18215"},
    )
    print("decoded", tuple(decoded.shape), "mean", tuple(mean.shape))


if __name__ == "__main__":
    main()
