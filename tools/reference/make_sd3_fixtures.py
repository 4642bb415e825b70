"""SD3 parity fixtures from diffusers (`SD3Transformer2DModel`, `FlowMatchEulerDiscreteScheduler`),
for ml/models/tests/sd3_parity.rs.

tests/fixtures/tiny-sd3/transformer/: an SD3 transformer at diffusers' own test sizes (4 heads
of 8, joint and caption width 32, pooled width 64) with 2 blocks (so the last, text-pre-only
block is covered), patch 2, positions on a 16×16 grid (`pos_embed_max_size`), random weights.
tests/fixtures/tiny-sd35/transformer/: the same with SD3.5's RMS-normed queries and keys and
MMDiT-X's second attention in block 0 (`dual_attention_layers`).

tests/fixtures/sd3-ref/:
- forward.safetensors: each transformer at t = 421.5 on 2×4×8×8 and non-square 2×4×8×12
  latents, text 2×7×32, pooled 2×64 → `out`, `out_wide`, `out35`, `out35_wide`;
- loop.safetensors: SD3Pipeline's denoising loop on the tiny SD3 (10 flow-matching Euler steps,
  shift 3, guidance 5 on `[negative; positive]` features), non-square 8×12 latent: every step's
  latents, the noise and the features.

Run: tools/reference/.venv/bin/python tools/reference/make_sd3_fixtures.py
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
REF = FIX / "sd3-ref"


def transformer(seed, **kw):
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=16,
        **kw,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.12 if p.ndim > 1 else 0.05))
    return model.eval()


def main():
    REF.mkdir(parents=True, exist_ok=True)
    sd3 = transformer(1)
    sd35 = transformer(2, qk_norm="rms_norm", dual_attention_layers=(0,))
    sd3.save_pretrained(FIX / "tiny-sd3" / "transformer", safe_serialization=True)
    sd35.save_pretrained(FIX / "tiny-sd35" / "transformer", safe_serialization=True)

    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 8), generator=g)
    wide = torch.randn((2, 4, 8, 12), generator=g)
    text = torch.randn((2, 7, 32), generator=g)
    pooled = torch.randn((2, 64), generator=g)
    t = torch.tensor([421.5, 421.5])
    with torch.no_grad():
        kw = dict(encoder_hidden_states=text, pooled_projections=pooled, timestep=t)
        out = {
            "out": sd3(x, **kw).sample,
            "out_wide": sd3(wide, **kw).sample,
            "out35": sd35(x, **kw).sample,
            "out35_wide": sd35(wide, **kw).sample,
        }
    save_file(
        {"x": x, "x_wide": wide, "text": text, "pooled": pooled, **{k: v.contiguous() for k, v in out.items()}},
        str(REF / "forward.safetensors"),
        metadata={"t": "421.5", "diffusers": diffusers.__version__},
    )

    # SD3Pipeline's loop, on given features.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    noise = torch.randn((1, 4, 8, 12), generator=g)
    text2 = torch.randn((2, 9, 32), generator=g)
    pooled2 = torch.randn((2, 64), generator=g)
    latents = noise.clone()
    steps = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = torch.cat([latents] * 2)
            v = sd3(inp, encoder_hidden_states=text2, pooled_projections=pooled2, timestep=t.expand(2)).sample
            uncond, cond = v.chunk(2)
            v = uncond + 5.0 * (cond - uncond)
            latents = scheduler.step(v, t, latents).prev_sample
            steps.append(latents.clone())
    save_file(
        {
            "latents": torch.stack(steps).contiguous(),
            "noise": noise.contiguous(),
            "text": text2.contiguous(),
            "pooled": pooled2.contiguous(),
            "timesteps": scheduler.timesteps.contiguous(),
        },
        str(REF / "loop.safetensors"),
        metadata={"guidance": "5.0", "scheduler": json.dumps(dict(scheduler.config)), "diffusers": diffusers.__version__},
    )
    print("loop steps", len(steps), "max", float(torch.stack(steps).abs().max()))


if __name__ == "__main__":
    main()
