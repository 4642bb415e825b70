"""SDXL parity fixtures from diffusers (`UNet2DConditionModel` with text_time added conditioning,
`StableDiffusionXLPipeline`), for ml/models/tests/sdxl_parity.rs and tests/e2e/sdxl.rs.

tests/fixtures/tiny-sdxl/: an SDXL pipeline folder, random weights, at diffusers' own SDXL test
sizes: the UNet (block channels 32/64, a DownBlock2D then a cross-attention block with 2
transformer layers, heads 2/4, linear projections, cross-attention width 64, text_time added
conditioning with 8-wide time-id features, projection input 80 = 32 + 6·8); CLIP-L (width 32)
and bigG with projection (width 32; its tokenizer pads with `!`), both 5 layers with the real
CLIP vocabulary; the UNet and both encoders stored in f16; a 2-level VAE; EulerDiscreteScheduler with leading spacing.

tests/fixtures/sdxl-ref/:
- forward.safetensors: the UNet at t = 421 on a non-square 2×4×8×12 latent, text 2×7×64, pooled
  2×32 and time ids 2×6 → `out`;
- pipeline.safetensors: StableDiffusionXLPipeline (prompt, no negative: zeros, guidance 5, 10
  steps, 32×48 pixels): the features and pooled embeddings of the prompt and of the (zero)
  negative, every step's latents, the noise, the decoded image.

tests/fixtures/tiny-sdxl-refiner/: an SDXL refiner pipeline folder (bigG alone, no CLIP-L; the
UNet's time ids end with the aesthetic score: projection input 72 = 32 + 5·8, cross-attention
width 32), and sdxl-ref/refiner.safetensors: StableDiffusionXLImg2ImgPipeline refining a given
latent (strength 0.6, 10 Euler steps, guidance 5, aesthetic scores 6 and 2.5, the empty negative
encoded as text): the start latent, the noise it adds, every step's latents, the image.

Run: tools/reference/.venv/bin/python tools/reference/make_sdxl_fixtures.py
"""

import json
import pathlib
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
REF = FIX / "sdxl-ref"
PIPE = FIX / "tiny-sdxl"
PROMPT = "a small red house by the sea"


def randomize(model, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) * (scale if p.ndim > 1 else 0.02)
            p.copy_(v)
    return model.eval()


def clip(cls, seed, **kw):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
        hidden_act="gelu", max_position_embeddings=77, **kw,
    )
    m = randomize(cls(cfg), seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    return m


def main():
    REF.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(PIPE, ignore_errors=True)
    torch.manual_seed(1)
    unet = randomize(
        UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=1,
        ),
        1,
        scale=0.05,
    )
    with torch.no_grad():  # stored in f16: the reference runs on the rounded values
        for p in unet.parameters():
            p.copy_(p.half().float())
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 12), generator=g)
    text = torch.randn((2, 7, 64), generator=g)
    pooled = torch.randn((2, 32), generator=g)
    ids = torch.tensor([[32.0, 48.0, 0.0, 0.0, 32.0, 48.0], [64.0, 16.0, 4.0, 2.0, 48.0, 32.0]])
    with torch.no_grad():
        out = unet(x, 421, encoder_hidden_states=text, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    save_file(
        {"x": x, "text": text, "pooled": pooled, "time_ids": ids, "out": out.contiguous()},
        str(REF / "forward.safetensors"),
        metadata={"t": "421", "diffusers": diffusers.__version__},
    )

    tok = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer")
    tok_2 = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer", pad_token="!")
    enc = clip(CLIPTextModel, 11)
    enc_2 = clip(CLIPTextModelWithProjection, 12, projection_dim=32)
    torch.manual_seed(14)
    vae = randomize(
        AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.13025,
        ),
        14,
        scale=0.1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=enc, text_encoder_2=enc_2, tokenizer=tok, tokenizer_2=tok_2, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(PIPE, safe_serialization=True)
    for sub, m in (("text_encoder", enc), ("text_encoder_2", enc_2), ("unet", unet)):
        m.to(torch.float16).save_pretrained(PIPE / sub, safe_serialization=True)
        m.to(torch.float32)
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        shutil.rmtree(PIPE / sub)
        shutil.copytree(FIX / "tiny-sd" / "tokenizer", PIPE / sub)
        for f in ("special_tokens_map.json", "tokenizer_config.json"):
            d = json.loads((PIPE / sub / f).read_text())
            d["pad_token"] = pad
            (PIPE / sub / f).write_text(json.dumps(d, indent=2))

    g = torch.Generator().manual_seed(21)
    noise = torch.randn((1, 4, 16, 24), generator=g)
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(prompt=PROMPT, do_classifier_free_guidance=True, negative_prompt=None)
        image = pipe(
            prompt=PROMPT, height=32, width=48, num_inference_steps=10, guidance_scale=5.0,
            latents=noise.clone(), output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "context": pe.contiguous(), "negative_context": ne.contiguous(),
            "pooled": pp.contiguous(), "negative_pooled": npool.contiguous(),
            "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(REF / "pipeline.safetensors"),
        metadata={"prompt": PROMPT, "diffusers": diffusers.__version__},
    )
    print("pipeline steps", len(steps), "context", tuple(pe.shape), "max", float(torch.stack(steps).abs().max()))
    refiner(vae, enc_2, tok_2, scheduler)


def refiner(vae, enc_2, tok_2, scheduler):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as img2img

    out_dir = FIX / "tiny-sdxl-refiner"
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.manual_seed(2)
    unet = randomize(
        UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=72,
            cross_attention_dim=32, norm_num_groups=1,
        ),
        2,
        scale=0.05,
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.half().float())
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=enc_2, tokenizer=None, tokenizer_2=tok_2, unet=unet,
        scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for sub, m in (("text_encoder_2", enc_2), ("unet", unet)):
        m.to(torch.float16).save_pretrained(out_dir / sub, safe_serialization=True)
        m.to(torch.float32)
    shutil.rmtree(out_dir / "tokenizer_2")
    shutil.copytree(PIPE / "tokenizer_2", out_dir / "tokenizer_2")

    g = torch.Generator().manual_seed(31)
    start = torch.randn((1, 4, 16, 24), generator=g) * 0.5
    noise = torch.randn((1, 4, 16, 24), generator=g)
    img2img.randn_tensor = lambda shape, generator=None, device=None, dtype=None, **kw: noise.clone().to(dtype or torch.float32)
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        image = pipe(
            prompt=PROMPT, negative_prompt="", image=start, strength=0.6, num_inference_steps=10,
            guidance_scale=5.0, output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "start": start.contiguous(), "noise": noise.contiguous(),
            "latents": torch.stack(steps).contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(REF / "refiner.safetensors"),
        metadata={"prompt": PROMPT, "strength": "0.6", "diffusers": diffusers.__version__},
    )
    print("refiner steps", len(steps), "max", float(torch.stack(steps).abs().max()))


if __name__ == "__main__":
    main()
