"""An SD3 single file with its text encoders and VAE, as Stability AI ships
`sd3_medium_incl_clips_t5xxlfp8.safetensors`, and diffusers' pipeline run on it.

tests/fixtures/tiny-sd3-sai-all.safetensors: tiny-sd3-sai.safetensors's transformer (from
make_sd3_fixtures.py) plus tiny-sd3's text encoders and VAE: CLIP-L under
`text_encoders.clip_l.transformer.*` (no projection: diffusers, like Stability AI's code, uses
an identity in its place), CLIP-G with its projection under `text_encoders.clip_g.transformer.*`,
T5 under `text_encoders.t5xxl.transformer.*` (transformers' names), the VAE under
`first_stage_model.*` (LDM names). Each component is checked against the converter diffusers'
`from_single_file` runs for it (diffusers tells the tiny CLIPs apart by width, and the two share
one, so its pipeline-level dispatch cannot be used on them).

tests/fixtures/sd3-ref/pipeline_single_file.safetensors: StableDiffusion3Pipeline on those
weights (CLIP-L's projection the identity), otherwise as sd3-ref/pipeline.safetensors: prompt,
empty negative, T5 to 256 tokens, guidance 5, 10 flow-matching Euler steps, 32×48 pixels:
every step's latents, the noise, the decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_sd3_single_file.py
"""

import pathlib
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import StableDiffusion3Pipeline
from diffusers.loaders import single_file_utils as sfu

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_sd_fixtures import vae_to_ldm  # noqa: E402

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
PIPE = FIX / "tiny-sd3"
OUT = FIX / "tiny-sd3-sai-all.safetensors"
PROMPT = "a small red house by the sea"


def plain(sd):
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def same(converted, model, what, tied=()):
    ref = {k: v for k, v in plain(model.state_dict()).items() if k not in tied}
    converted = plain(converted)
    assert set(converted) == set(ref), (what, set(converted) ^ set(ref))
    d = max((converted[k].float() - ref[k].float()).abs().max().item() for k in ref)
    assert d == 0.0, (what, d)
    print(f"  {what}: diffusers' converter maps all {len(ref)} tensors back, max difference 0")


def main():
    pipe = StableDiffusion3Pipeline.from_pretrained(PIPE, torch_dtype=torch.float32)
    sd = dict(load_file(str(FIX / "tiny-sd3-sai.safetensors")))
    clip_l = {k: v for k, v in plain(pipe.text_encoder.state_dict()).items() if not k.startswith("text_projection")}
    sd.update({"text_encoders.clip_l.transformer." + k: v.half() for k, v in clip_l.items()})
    sd.update({"text_encoders.clip_g.transformer." + k: v.half() for k, v in plain(pipe.text_encoder_2.state_dict()).items()})
    # T5's embedding is tied: stored once, as `shared.weight`.
    sd.update({"text_encoders.t5xxl.transformer." + k: v.clone() for k, v in pipe.text_encoder_3.state_dict().items() if k != "encoder.embed_tokens.weight"})
    sd.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(OUT))
    print("wrote", OUT.name, len(sd), "tensors")

    ck = load_file(str(OUT))
    # What diffusers' from_single_file does per component.
    got = sfu.convert_ldm_clip_checkpoint(ck, "text_encoders.clip_l.transformer.")
    got["text_projection.weight"] = torch.eye(pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    same({k: v.float() for k, v in got.items()}, pipe.text_encoder, "CLIP-L (identity projection)")
    got = sfu.convert_ldm_clip_checkpoint(ck, "text_encoders.clip_g.transformer.")
    same({k: v.float() for k, v in got.items() if not k.startswith(("cond_", "condi"))}, pipe.text_encoder_2, "CLIP-G")
    same(sfu.convert_sd3_t5_checkpoint_to_diffusers(ck), pipe.text_encoder_3, "T5", tied=("encoder.embed_tokens.weight",))
    vae = sfu.convert_ldm_vae_checkpoint(ck, dict(pipe.vae.config))
    same(vae, pipe.vae, "VAE")

    noise = load_file(str(FIX / "sd3-ref" / "pipeline.safetensors"))["noise"]
    steps = []

    def record(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    with torch.no_grad():
        image = pipe(
            prompt=PROMPT, negative_prompt="", height=32, width=48, num_inference_steps=10, guidance_scale=5.0,
            max_sequence_length=256, latents=noise.clone(), output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(FIX / "sd3-ref" / "pipeline_single_file.safetensors"),
        metadata={"prompt": PROMPT, "diffusers": diffusers.__version__},
    )
    print("pipeline steps", len(steps))


if __name__ == "__main__":
    main()
