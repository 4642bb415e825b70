"""The PyTorch side of the diffusion-transformer CPU benchmark (see ml/models/benches/transformers.rs).

    tools/reference/.venv/bin/python tools/reference/bench_transformers.py DIR make
writes random-weight transformers (diffusers' default initialisation) at published widths to DIR:
dit/ (DiT-XL/2-256, all 28 blocks), pixart/ (PixArt-α-XL-2-512, all 28 blocks), sd3/ (SD3.5
medium's width, heads, qk norm and dual attention with 4 of its 24 blocks), flux/ (FLUX.1-dev's
width with 1 double- and 2 single-stream blocks of its 19 and 38);
    tools/reference/.venv/bin/python tools/reference/bench_transformers.py DIR [threads]
times one forward of each (the mean of two after a warm-up) on the inputs the Rust side uses:
DiT 2×4×32×32 (CFG batch), PixArt 2×4×64×64 with 120 T5 tokens, SD3 2×16×64×64 with 333 text
tokens, Flux 1×16×64×64 with 512 T5 tokens (512² pictures for the last three).
"""

import sys
import time

import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel


def models():
    return {
        "dit": lambda: DiTTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        ),
        "pixart": lambda: PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096,
            use_additional_conditions=False,
        ),
        "sd3": lambda: SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
            dual_attention_layers=(0, 1), qk_norm="rms_norm",
        ),
        "flux": lambda: FluxTransformer2DModel(
            in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=True,
        ),
    }


def pack(x):
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def step(name, m):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    if name == "dit":
        x, labels = r(2, 4, 32, 32), torch.tensor([207, 1000])
        return lambda: m(x, timestep=torch.tensor([500, 500]), class_labels=labels)
    if name == "pixart":
        x, text = r(2, 4, 64, 64), r(2, 120, 4096)
        mask = torch.ones(2, 120)
        cond = {"resolution": None, "aspect_ratio": None}
        return lambda: m(x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=torch.tensor([500, 500]), added_cond_kwargs=cond)
    if name == "sd3":
        x, text, pooled = r(2, 16, 64, 64), r(2, 333, 4096), r(2, 2048)
        return lambda: m(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.tensor([500.0, 500.0]))
    x, text, pooled = r(1, 16, 64, 64), r(1, 512, 4096), r(1, 768)
    img = torch.zeros(32, 32, 3)
    img[..., 1] = torch.arange(32)[:, None]
    img[..., 2] = torch.arange(32)[None, :]
    return lambda: m(
        pack(x), encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.tensor([0.5]),
        img_ids=img.reshape(-1, 3), txt_ids=torch.zeros(512, 3), guidance=torch.tensor([3.5]),
    )


def main():
    root = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "make":
        for name, make in models().items():
            torch.manual_seed(0)
            m = make()
            m.save_pretrained(f"{root}/{name}", safe_serialization=True)
            print(name, sum(p.numel() for p in m.parameters()) / 1e6, "M parameters")
        return
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} {threads} threads")
    classes = {"dit": DiTTransformer2DModel, "pixart": PixArtTransformer2DModel, "sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}
    for name, cls in classes.items():
        m = cls.from_pretrained(f"{root}/{name}", torch_dtype=torch.float32).eval()
        f = step(name, m)
        with torch.inference_mode():
            f()
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                f()
                runs.append(time.perf_counter() - t0)
        print(f"{name:8} step {sum(runs) / len(runs):8.3f} s (mean of {[round(r, 3) for r in runs]})")
        del m


if __name__ == "__main__":
    main()
