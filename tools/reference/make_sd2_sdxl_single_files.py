"""Single-file (original layout) SD 2.x and SDXL checkpoints of the tiny pipelines, checked with
diffusers' own `from_single_file`, and an SD 2.x pipeline reference.

SDXL (from tests/fixtures/tiny-sdxl and tiny-sdxl-refiner, made by make_sdxl_fixtures.py):
- tiny-sdxl-single.safetensors: the UNet under `model.diffusion_model.*` (the added-conditioning
  MLP as `label_emb.0.{0,2}`), the VAE under `first_stage_model.*`, CLIP-L under
  `conditioner.embedders.0.transformer.*` and bigG in OpenCLIP's layout under
  `conditioner.embedders.1.model.*` (fused `attn.in_proj_*`, `text_projection` stored
  transposed, `positional_embedding`, `ln_final`);
- tiny-sdxl-refiner-single.safetensors: the refiner, bigG under `conditioner.embedders.0.model.*`.
The UNets and encoders are stored in f16 (their folder values are f16 already), the VAE in f32,
so a graph on the single file must give the folder's numbers: tests/e2e/sdxl.rs compares it with
sdxl-ref/pipeline.safetensors.

SD 2.x (new): tests/fixtures/tiny-sd2/, a StableDiffusionPipeline with SD 2.x's traits at toy
sizes: an OpenCLIP-style text encoder (gelu, 3 layers, tokenizer padding with `!`), a UNet with
linear projections, v-prediction (DDIM config, leading spacing); the VAE of tiny-sd. Its single
file tiny-sd2-single.safetensors holds the text encoder under `cond_stage_model.model.*` in
OpenCLIP's layout with one extra, final resblock that the diffusers model does not use (SD 2.x
files hold 24 resblocks and the model runs 23; diffusers drops the 24th by name, so its reload
check here runs on the file without the extra block). sd2-ref/pipeline.safetensors:
StableDiffusionPipeline with DPMSolverMultistepScheduler (the SD noise schedule, v-prediction, its
default linspace spacing, as samplers.sample's dpmpp_2m), 10 steps, guidance 7.5,
24×32 pixels: the noise, every step's latents and the decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_sd2_sdxl_single_files.py
"""

import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_sd_fixtures import unet_to_ldm, vae_to_ldm  # noqa: E402
from make_sdxl_fixtures import randomize as seeded  # noqa: E402

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SDXL = FIX / "tiny-sdxl"
REFINER = FIX / "tiny-sdxl-refiner"
SD2 = FIX / "tiny-sd2"
SD2_REF = FIX / "sd2-ref"
PROMPT = "a photo of a cat, best quality"
NEGATIVE = "blurry, lowres"


def plain_clip(sd):
    """A CLIP text model's state dict with the `text_model.` prefix (transformers may drop it)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        out[k] = v
    return out


def open_clip_layout(sd, prefix, extra_block_seed=None):
    """A transformers CLIP text model's state dict in OpenCLIP's text-tower layout under `prefix`.
    With `extra_block_seed`, one more random resblock is appended (SD 2.x files hold one the model
    does not run)."""
    sd = plain_clip(sd)
    out = {}
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for theirs, ours in names.items():
            for s in ("weight", "bias"):
                out[f"{dst}{ours}.{s}"] = sd[f"{src}{theirs}.{s}"]
        for s in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{s}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{s}"] for p in "qkv"], 0)
    if extra_block_seed is not None:
        g = torch.Generator().manual_seed(extra_block_seed)
        for k in [k for k in out if k.startswith(f"transformer.resblocks.{layers - 1}.")]:
            new = k.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}.")
            out[new] = (torch.randn(out[k].shape, generator=g) * 0.1).to(out[k].dtype)
    out["logit_scale"] = torch.tensor(4.6052)
    return {prefix + k: v for k, v in out.items()}


def unet_layout(unet, dtype):
    sd = unet.state_dict()
    added = {k: v for k, v in sd.items() if k.startswith("add_embedding.")}
    rest = {k: v for k, v in sd.items() if k not in added}
    out = unet_to_ldm(rest, dict(unet.config), dtype=dtype)
    for k, v in added.items():
        lin, s = k.split(".")[1:]
        out[f"model.diffusion_model.label_emb.0.{0 if lin == 'linear_1' else 2}.{s}"] = v.to(dtype)
    return out


def vae_layout(vae):
    return vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels))


def worst_difference(a, b):
    a, b = a.state_dict(), b.state_dict()
    missing = [k for k in a if k not in b and not k.endswith("position_ids")]
    assert not missing, f"not reloaded: {missing[:5]}"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if not k.endswith("position_ids"))


def check(pipe, file, config, cls, open_clip_prefix=None):
    """Reloads `file` with diffusers' from_single_file and compares every component's weights.
    diffusers tells SDXL's two encoders apart by width and the tiny ones share one, so bigG
    (`open_clip_prefix`) is checked with the converter from_single_file runs for it."""
    back = cls.from_single_file(str(file), config=str(config), torch_dtype=torch.float32, local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = getattr(pipe, name, None)
        if ours is None:
            continue
        if name == "text_encoder_2" and open_clip_prefix:
            from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

            converted = convert_open_clip_checkpoint(ours, load_file(str(file)), prefix=open_clip_prefix)
            theirs = {k: v for k, v in ours.state_dict().items() if not k.endswith("position_ids")}
            assert set(converted) == set(theirs), set(converted) ^ set(theirs)
            d = max((converted[k].float() - theirs[k]).abs().max().item() for k in theirs)
            how = "diffusers' convert_open_clip_checkpoint maps"
        else:
            d = worst_difference(ours, getattr(back, name))
            how = "diffusers' from_single_file reloads"
        print(f"  {file.name}: {how} {name}, max difference {d:.3g}")
        assert d == 0.0, name


def save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    print("wrote", path.relative_to(FIX.parent.parent), len(sd), "tensors")


def sdxl():
    base = StableDiffusionXLPipeline.from_pretrained(SDXL, torch_dtype=torch.float32)
    sd = unet_layout(base.unet, torch.float16)
    sd.update(vae_layout(base.vae))
    for k, v in plain_clip(base.text_encoder.state_dict()).items():
        sd["conditioner.embedders.0.transformer." + k] = v.half()
    sd.update({k: v.half() for k, v in open_clip_layout(base.text_encoder_2.state_dict(), "conditioner.embedders.1.model.").items()})
    save(sd, FIX / "tiny-sdxl-single.safetensors")
    check(base, FIX / "tiny-sdxl-single.safetensors", SDXL, StableDiffusionXLPipeline, "conditioner.embedders.1.model.")

    ref = StableDiffusionXLImg2ImgPipeline.from_pretrained(REFINER, torch_dtype=torch.float32)
    sd = unet_layout(ref.unet, torch.float16)
    sd.update(vae_layout(ref.vae))
    sd.update({k: v.half() for k, v in open_clip_layout(ref.text_encoder_2.state_dict(), "conditioner.embedders.0.model.").items()})
    save(sd, FIX / "tiny-sdxl-refiner-single.safetensors")
    check(ref, FIX / "tiny-sdxl-refiner-single.safetensors", REFINER, StableDiffusionXLImg2ImgPipeline, "conditioner.embedders.0.model.")


def randomize(model, seed, scale=0.1):
    """make_sdxl_fixtures.py's seeded weights, rounded to f16 values (the single file stores
    them as f16)."""
    model = seeded(model, seed, scale=scale)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def sd2():
    shutil.rmtree(SD2, ignore_errors=True)
    unet = randomize(
        UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, upcast_attention=True, cross_attention_dim=32, norm_num_groups=8,
        ),
        41,
        scale=0.05,
    )
    enc = randomize(
        CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
                layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3, vocab_size=49408,
                hidden_act="gelu", max_position_embeddings=77, projection_dim=32,
            )
        ),
        42,
    )
    tok = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer", pad_token="!")
    vae = AutoencoderKL.from_pretrained(FIX / "tiny-sd" / "vae").eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction", timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(SD2, safe_serialization=True)
    for sub, m in (("text_encoder", enc), ("unet", unet)):  # f16 values, stored as f16
        m.to(torch.float16).save_pretrained(SD2 / sub, safe_serialization=True)
        m.to(torch.float32)
    # The same vocabulary files as tiny-sd's, padding with `!` (as SD 2.x's tokenizer does).
    shutil.rmtree(SD2 / "tokenizer")
    shutil.copytree(SDXL / "tokenizer_2", SD2 / "tokenizer")
    assert CLIPTokenizer.from_pretrained(SD2 / "tokenizer").pad_token == "!"

    sd = unet_layout(unet, torch.float16)
    sd.update(vae_layout(vae))
    text = open_clip_layout(enc.state_dict(), "cond_stage_model.model.")
    # OpenCLIP's own projection (SD 2.x files carry it; the UNet does not use it).
    text["cond_stage_model.model.text_projection"] = torch.randn((32, 32), generator=torch.Generator().manual_seed(43))
    with tempfile.TemporaryDirectory() as tmp:
        plain = dict(sd)
        plain.update({k: v.half() for k, v in text.items()})
        save_file({k: v.contiguous() for k, v in plain.items()}, f"{tmp}/check.safetensors")
        check(pipe, pathlib.Path(tmp) / "check.safetensors", SD2, StableDiffusionPipeline)
    extra = open_clip_layout(enc.state_dict(), "cond_stage_model.model.", extra_block_seed=44)
    extra["cond_stage_model.model.text_projection"] = text["cond_stage_model.model.text_projection"]
    sd.update({k: v.half() for k, v in extra.items()})
    save(sd, FIX / "tiny-sd2-single.safetensors")

    SD2_REF.mkdir(exist_ok=True)
    # samplers.sample's dpmpp_2m: the SD noise schedule with DPMSolverMultistepScheduler's own
    # defaults (linspace spacing), as the SD 1.x loops in make_sd_fixtures.py.
    pipe.scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        prediction_type="v_prediction",
    )
    f = pipe.vae_scale_factor
    noise = torch.randn((1, 4, 24 // f, 32 // f), generator=torch.Generator().manual_seed(45))
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        image = pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, height=24, width=32, num_inference_steps=10,
            guidance_scale=7.5, latents=noise.clone(), output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "noise": noise.contiguous(),
            "latents": torch.stack(steps).contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(SD2_REF / "pipeline.safetensors"),
        metadata={"prompt": PROMPT, "negative": NEGATIVE, "scheduler": "DPMSolverMultistep", "diffusers": diffusers.__version__},
    )
    print("sd2 pipeline steps", len(steps), "max", float(torch.stack(steps).abs().max()))


if __name__ == "__main__":
    sdxl()
    sd2()
