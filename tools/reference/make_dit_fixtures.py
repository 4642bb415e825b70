"""DiT parity fixtures from diffusers (`DiTTransformer2DModel`, `DiTPipeline`), for
ml/models/tests/dit_parity.rs and tests/e2e/dit.rs.

tests/fixtures/tiny-dit/: a `DiTPipeline` folder (transformer/, vae/, scheduler/,
model_index.json with `id2label`) at diffusers' own DiT test sizes (2 layers, 2 heads of 8,
patch 4, sample size 16, learned sigma: 8 channels out), random weights, with the tiny SD VAE
(tests/fixtures/tiny-sd/vae) and DDIM on DiT's linear betas (0.0001 → 0.02).

tests/fixtures/dit-ref/:
- forward.safetensors: the transformer at t = 421 on a 2×4×16×16 latent with labels [3, 1000]
  (1000: no class) → `out`; on a non-square 2×4×16×8 latent → `out_wide`. diffusers'
  unpatchify assumes a square grid (`height = width = int(tokens ** 0.5)`), so the non-square
  reference runs diffusers' own modules (patch embedding with its positions recomputed for the
  grid, blocks, output norm and projections) and unpatchifies to the real grid here.
- loop.safetensors, loop_wide.safetensors: `DiTPipeline` with class label 3, guidance 4, 10 DDIM
  steps, square (16×16) and non-square (16×8, the transformer's forward swapped for the one
  above): every step's latents (the first half of diffusers' doubled batch), the noise, the
  decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_dit_fixtures.py
"""

import json
import pathlib

import diffusers
import diffusers.pipelines.dit.pipeline_dit as pipeline_dit
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from safetensors.torch import save_file

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = FIX / "tiny-dit"
REF = FIX / "dit-ref"
LABELS = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 3: "tiger shark", 207: "golden retriever"}


def random_(model, seed, scale=0.04):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def any_grid_forward(model):
    """The transformer's forward with the unpatchify on the latent's own grid."""

    def forward(hidden_states, timestep=None, class_labels=None, return_dict=True, **_):
        p = model.config.patch_size
        h, w = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
        x = model.pos_embed(hidden_states)
        for block in model.transformer_blocks:
            x = block(x, timestep=timestep, class_labels=class_labels)
        cond = model.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
        shift, scale = model.proj_out_1(F.silu(cond)).chunk(2, dim=1)
        x = model.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        x = model.proj_out_2(x)
        c = model.out_channels
        x = x.reshape(-1, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(-1, c, h * p, w * p)
        return Transformer2DModelOutput(sample=x) if return_dict else (x,)

    return forward


def run_loop(pipe, noise, name):
    pipeline_dit.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise.clone()
    steps = []
    inner = pipe.scheduler.step

    def step(model_output, t, sample, *a, **kw):
        out = inner(model_output, t, sample, *a, **kw)
        steps.append(out.prev_sample[: noise.shape[0]].clone())
        return out

    pipe.scheduler.step = step
    with torch.no_grad():
        image = pipe(class_labels=[3], guidance_scale=4.0, num_inference_steps=10, output_type="np").images
    pipe.scheduler.step = inner
    save_file(
        {
            "latents": torch.stack(steps).contiguous(),
            "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(REF / f"{name}.safetensors"),
        metadata={"diffusers": diffusers.__version__, "scheduler": json.dumps(dict(pipe.scheduler.config))},
    )
    print(name, "steps", len(steps))


def main():
    REF.mkdir(parents=True, exist_ok=True)
    transformer = random_(
        DiTTransformer2DModel(
            sample_size=16,
            num_layers=2,
            patch_size=4,
            attention_head_dim=8,
            num_attention_heads=2,
            in_channels=4,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
        ),
        1,
    ).eval()
    vae = AutoencoderKL.from_pretrained(FIX / "tiny-sd" / "vae").eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="linspace",
    )
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=LABELS)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(OUT, safe_serialization=True)
    # DiTPipeline takes id2label but does not write it; diffusers reads it back from
    # model_index.json (as the published DiT folders have it).
    index = json.loads((OUT / "model_index.json").read_text())
    index["id2label"] = {str(k): v for k, v in LABELS.items()}
    (OUT / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 16, 16), generator=g)
    wide = torch.randn((2, 4, 16, 8), generator=g)
    labels = torch.tensor([3, 1000])
    t = torch.tensor([421, 421])
    with torch.no_grad():
        out = transformer(x, timestep=t, class_labels=labels).sample
        own = any_grid_forward(transformer)
        same = own(x, timestep=t, class_labels=labels).sample
        assert torch.allclose(out, same, atol=0, rtol=0), "the any-grid forward differs on a square grid"
        out_wide = own(wide, timestep=t, class_labels=labels).sample
    save_file(
        {"x": x, "x_wide": wide, "out": out.contiguous(), "out_wide": out_wide.contiguous()},
        str(REF / "forward.safetensors"),
        metadata={"t": "421", "labels": "3,1000"},
    )

    reloaded = DiTPipeline.from_pretrained(OUT)
    assert reloaded.labels.get("goldfish") == 1, reloaded.labels
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(99))
    run_loop(pipe, noise, "loop")
    transformer.forward = any_grid_forward(transformer)
    noise = torch.randn((1, 4, 16, 8), generator=torch.Generator().manual_seed(98))
    run_loop(pipe, noise, "loop_wide")


if __name__ == "__main__":
    main()
