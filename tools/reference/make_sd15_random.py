"""A Stable Diffusion 1.5-sized pipeline with random weights, for benchmarks.

The published SD 1.5 configs (ml/models/configs/sd15/*.json, the same files the plugin uses for
single-file checkpoints) with seeded random weights, saved as a diffusers folder in float16 to
halve the disk (both implementations compute in float32). The tokenizer is the real CLIP one from
tests/fixtures/tiny-sd/tokenizer.

Run: tools/reference/.venv/bin/python tools/reference/make_sd15_random.py target/sd15-random
"""

import json
import pathlib
import shutil
import sys

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "ml" / "models" / "configs" / "sd15"


def config(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"}


def halve(folder):
    for f in folder.glob("*.safetensors"):
        save_file({k: v.half().contiguous() for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})


def main(out):
    out = pathlib.Path(out)
    if (out / "model_index.json").exists():
        print("exists:", out)
        return
    torch.manual_seed(0)
    with torch.no_grad():
        UNet2DConditionModel(**config("unet")).save_pretrained(out / "unet", safe_serialization=True)
        halve(out / "unet")
        AutoencoderKL(**config("vae")).save_pretrained(out / "vae", safe_serialization=True)
        halve(out / "vae")
        tcfg = config("text_encoder")
        tcfg.pop("model_type", None)
        CLIPTextModel(CLIPTextConfig(**tcfg)).save_pretrained(out / "text_encoder", safe_serialization=True)
        halve(out / "text_encoder")
    shutil.copytree(ROOT / "tests/fixtures/tiny-sd/tokenizer", out / "tokenizer", dirs_exist_ok=True)
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        clip_sample=False, set_alpha_to_one=False,
    ).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "sd15-random")
