"""Tiny VQModel (VQ-GAN) and its parity fixture, for the TPM-steering issue.

Builds, with seeded random weights, tests/fixtures/tiny-vq/ (a diffusers VQModel folder:
two levels of 8/16 channels, 3 latent channels, a 32-entry codebook of width 4) and records in
tests/fixtures/tpm-ref/vq.safetensors, for a non-square image:

* latent: `encode(x).latents` (unquantised);
* codes: the nearest codebook entries (diffusers' `quantize`);
* code_log_probs: Tiramisu's soft codes, log_softmax(−√(‖z − e‖² / d)) (its VQ-GAN's
  `quantize_prob`, written out here);
* decoded: `decode(latent).sample` (quantised, as diffusers does by default);
* decoded_codes: the decoder's output for the codes looked up in the codebook.

Run: tools/reference/.venv/bin/python tools/reference/make_tpm_fixtures.py
"""

import pathlib

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import VQModel

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def main():
    torch.manual_seed(0)
    vq = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=3, num_vq_embeddings=32, norm_num_groups=4, vq_embed_dim=4,
    ).eval()
    with torch.no_grad():
        for n, p in vq.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    vq.save_pretrained(ROOT / "tiny-vq", safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 24, 32, generator=g) * 2 - 1
    with torch.no_grad():
        h = vq.encode(x).latents
        z = h.permute(0, 2, 3, 1).reshape(-1, 4)
        e = vq.quantize.embedding.weight
        d = (z ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * z @ e.t()
        log_probs = torch.log_softmax(-torch.sqrt(d / 4), dim=-1).reshape(1, 12, 16, 32)
        codes = torch.argmin(torch.cdist(z, e), dim=1).reshape(1, 12, 16)
        decoded = vq.decode(h).sample
        decoded_codes = vq.decoder(vq.post_quant_conv(e[codes].permute(0, 3, 1, 2)))
    (ROOT / "tpm-ref").mkdir(exist_ok=True)
    save_file(
        {"image": x, "latent": h.contiguous(), "codes": codes.int().contiguous(),
         "code_log_probs": log_probs.contiguous(), "decoded": decoded.contiguous(),
         "decoded_codes": decoded_codes.contiguous()},
        str(ROOT / "tpm-ref" / "vq.safetensors"),
        metadata={"diffusers": diffusers.__version__, "torch": torch.__version__},
    )
    print("vq: latent", tuple(h.shape), "distinct codes", codes.unique().numel())


if __name__ == "__main__":
    main()
