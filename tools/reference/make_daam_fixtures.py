"""DAAM aggregation fixture (Tang et al. 2023, `daam/trace.py`, `daam/heatmap.py`), re-implemented
on synthetic cross-attention probabilities as the seed-algorithm notes describe:

    S_key = Σ_steps P_key                      key = (layer, head), P: hw × tokens (conditional half)
    D_k   = mean_keys clamp₀(bicubic(S_key[:, k] → latent h × w))
    word  = mean of D over the word's token indices

Maps whose side is the latent's / 8 are skipped. Bicubic is torch's (align_corners=False).

Run: tools/reference/.venv/bin/python tools/reference/make_daam_fixtures.py
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "daam.safetensors"

LATENT = (32, 48)  # non-square latent
TOKENS = 7
STEPS = 2
HEADS = 2
FACTORS = (2, 4, 8)  # the factor-8 layer is skipped


def main():
    g = torch.Generator().manual_seed(0)
    tensors = {}
    sums = {}
    for step in range(STEPS):
        for layer, f in enumerate(FACTORS):
            h, w = LATENT[0] // f, LATENT[1] // f
            logits = torch.randn(HEADS, h * w, TOKENS, generator=g) * 3
            probs = logits.softmax(-1)
            tensors[f"probs_{step}_{layer}"] = probs.contiguous()
            if f == 8:
                continue
            sums[layer] = sums.get(layer, 0) + probs
    maps = []
    for layer, s in sums.items():
        f = FACTORS[layer]
        h, w = LATENT[0] // f, LATENT[1] // f
        for head in range(HEADS):
            m = s[head].T.reshape(TOKENS, 1, h, w)
            up = F.interpolate(m, size=LATENT, mode="bicubic", align_corners=False).clamp_(min=0)
            maps.append(up[:, 0])
    global_maps = torch.stack(maps).mean(0)  # tokens × H × W
    tensors["global"] = global_maps.contiguous()
    tensors["word_2_3"] = global_maps[[2, 3]].mean(0).contiguous()
    save_file(tensors, str(OUT), metadata={"steps": str(STEPS), "factors": "2,4,8", "latent": "32x48"})
    print("global", tuple(global_maps.shape))


if __name__ == "__main__":
    main()
