"""Reference outputs of the diffusion-transformer blocks in `ml/nn` (diffusers' PatchEmbed with
sine-cosine positions, AdaLayerNormZero with CombinedTimestepLabelEmbeddings), with seeded
random weights, written to tests/fixtures/nn.safetensors (weights and outputs in one file).

    tools/reference/.venv/bin/python tools/reference/make_nn_fixtures.py
"""

import pathlib

import torch
from safetensors.torch import save_file
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.normalization import AdaLayerNormZero

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "nn.safetensors"


def randomize(module, scale=0.2):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=scale)


def main():
    torch.manual_seed(0)
    t = {}
    # A non-square 12×8 latent of 4 channels, patch 2, width 32; sample_size 8 (base 4).
    pe = PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=32, interpolation_scale=1.0)
    randomize(pe)
    x = torch.randn(2, 4, 12, 8)
    with torch.no_grad():
        t["patch.out"] = pe(x)
    t["patch.x"] = x
    t["patch.proj.weight"] = pe.proj.weight.detach().clone()
    t["patch.proj.bias"] = pe.proj.bias.detach().clone()

    ada = AdaLayerNormZero(32, num_embeddings=10)
    randomize(ada)
    h = torch.randn(2, 5, 32)
    steps = torch.tensor([999.0, 17.5])
    labels = torch.tensor([3, 10])  # 10 = the "no class" label
    with torch.no_grad():
        y, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada(h, steps, labels, hidden_dtype=torch.float32)
    t.update({"ada.x": h, "ada.t": steps, "ada.labels": labels.float(), "ada.out": y, "ada.gate_msa": gate_msa,
              "ada.shift_mlp": shift_mlp, "ada.scale_mlp": scale_mlp, "ada.gate_mlp": gate_mlp})
    for k, v in ada.state_dict().items():
        t["ada." + k] = v.detach().clone()
    save_file({k: v.contiguous().float() for k, v in t.items()}, str(OUT))
    print("wrote", OUT, sorted(t))


if __name__ == "__main__":
    main()
