"""PixArt parity fixtures from diffusers (`PixArtTransformer2DModel`, `PixArtAlphaPipeline`), for
ml/models/tests/pixart_parity.rs and tests/e2e/pixart.rs.

tests/fixtures/tiny-pixart/: a PixArt-α pipeline folder (transformer/, vae/, scheduler/,
model_index.json; no text encoder: the graph loads tests/fixtures/tiny-t5 with llm.load_t5) at
diffusers' own PixArt test sizes (2 layers, 3 heads of 8, patch 2, sample size 8, T5 width 32,
learned sigma), random weights, the tiny SD VAE, and DPM-Solver++ 2M on linear betas
(0.0001 → 0.02). tests/fixtures/tiny-pixart-sizes/transformer/: the same transformer with the
resolution and aspect-ratio conditions (PixArt-α 1024's `use_additional_conditions`) and
`interpolation_scale` 2 (as PixArt-Σ 1024 has).

tests/fixtures/pixart-ref/:
- forward.safetensors: each transformer at t = 421 on 2×4×8×8 and non-square 2×4×8×4 latents,
  random text features 2×7×32 with different padding per sample → `out`, `out_wide`,
  `out_sizes` (resolution 64×32, aspect 2.0, on the non-square latent);
- loop.safetensors: `PixArtAlphaPipeline` (tiny T5, max_sequence_length 120, empty negative
  prompt, guidance 4.5, 10 steps, 32×16 pixels, no resolution binning, no caption cleaning): every
  step's latents, the noise, the decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_pixart_fixtures.py
"""

import json
import pathlib

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5EncoderModel

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = FIX / "tiny-pixart"
REF = FIX / "pixart-ref"
PROMPT = "a small red house by the sea"


def random_(model, seed, scale=0.04):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def transformer(seed, **kw):
    return random_(
        PixArtTransformer2DModel(
            sample_size=8,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            **kw,
        ),
        seed,
    ).eval()


def main():
    REF.mkdir(parents=True, exist_ok=True)
    model = transformer(1)
    sizes = transformer(2, use_additional_conditions=True, interpolation_scale=2)
    sizes.save_pretrained(FIX / "tiny-pixart-sizes" / "transformer", safe_serialization=True)

    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 8), generator=g)
    wide = torch.randn((2, 4, 8, 4), generator=g)
    text = torch.randn((2, 7, 32), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    t = torch.tensor([421, 421])
    cond = {"resolution": torch.tensor([[64.0, 32.0]] * 2), "aspect_ratio": torch.tensor([[2.0]] * 2)}
    with torch.no_grad():
        kw = dict(encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask)
        none = {"resolution": None, "aspect_ratio": None}
        out = model(x, added_cond_kwargs=none, **kw).sample
        out_wide = model(wide, added_cond_kwargs=none, **kw).sample
        out_sizes = sizes(wide, added_cond_kwargs=cond, **kw).sample
    save_file(
        {"x": x, "x_wide": wide, "text": text, "mask": mask, "out": out.contiguous(), "out_wide": out_wide.contiguous(), "out_sizes": out_sizes.contiguous()},
        str(REF / "forward.safetensors"),
        metadata={"t": "421", "resolution": "64,32", "aspect_ratio": "2.0"},
    )

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", steps_offset=1
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=AutoTokenizer.from_pretrained(FIX / "tiny-t5"),
        text_encoder=T5EncoderModel.from_pretrained(FIX / "tiny-t5").eval(),
        vae=AutoencoderKL.from_pretrained(FIX / "tiny-sd" / "vae").eval(),
        transformer=model,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    # The graph loads the text encoder from tiny-t5: the folder keeps only what is PixArt's own.
    pipe.transformer.save_pretrained(OUT / "transformer", safe_serialization=True)
    pipe.vae.save_pretrained(OUT / "vae", safe_serialization=True)
    pipe.scheduler.save_pretrained(OUT / "scheduler")
    index = {"_class_name": "PixArtAlphaPipeline", "_diffusers_version": diffusers.__version__,
             "transformer": ["diffusers", "PixArtTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
             "text_encoder": [None, None], "tokenizer": [None, None]}
    (OUT / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    noise = torch.randn((1, 4, 16, 8), generator=torch.Generator().manual_seed(99))
    steps = []
    with torch.no_grad():
        image = pipe(
            prompt=PROMPT,
            negative_prompt="",
            num_inference_steps=10,
            guidance_scale=4.5,
            height=32,
            width=16,
            latents=noise.clone(),
            output_type="np",
            clean_caption=False,
            use_resolution_binning=False,
            max_sequence_length=120,
            callback=lambda i, t, latents: steps.append(latents.clone()),
        ).images
    save_file(
        {
            "latents": torch.stack(steps).contiguous(),
            "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(REF / "loop.safetensors"),
        metadata={"diffusers": diffusers.__version__, "prompt": PROMPT, "scheduler": json.dumps(dict(scheduler.config))},
    )
    print("loop steps", len(steps), "max", max(s.abs().max().item() for s in steps))


if __name__ == "__main__":
    main()
