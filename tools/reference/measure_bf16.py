"""How far PyTorch's own bf16 strays from the f32 reference on the tiny committed pipelines: the
yardstick for LatentFlow's `dtype: bf16` bounds (README, "bf16 compute"; tests/e2e/{sdxl,sd3,flux}.rs).

    tools/reference/.venv/bin/python tools/reference/measure_bf16.py

For each of tiny-sdxl, tiny-sd3 and tiny-flux it reruns the pipeline of the fixture script
(same noise, prompt, steps, guidance) twice: with the denoiser in f32 (must give the committed
reference) and with the denoiser's weights in bf16 (inputs cast to bf16, its output back to
f32; text encoders and VAE stay f32, as LatentFlow's do). It prints every step's error as the
tests measure it, max|ours − reference| / max|reference|.
"""

import pathlib

import torch
from make_flux_fixtures import pack, unpack
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
PROMPT = "a small red house by the sea"


def in_bf16(model):
    """The model's weights in bf16; float inputs cast to bf16 on the way in, outputs to f32."""
    model.to(torch.bfloat16)

    def cast(v):
        if torch.is_tensor(v) and v.is_floating_point():
            return v.to(torch.bfloat16)
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v

    def pre(_, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def post(_, args, kwargs, out):
        return tuple(o.float() if torch.is_tensor(o) else o for o in out)

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)


def run(family, bf16):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    cls, folder, ref = {
        "sdxl": (StableDiffusionXLPipeline, "tiny-sdxl", "sdxl-ref/pipeline.safetensors"),
        "sd3": (StableDiffusion3Pipeline, "tiny-sd3", "sd3-ref/pipeline.safetensors"),
        "flux": (FluxPipeline, "tiny-flux", "flux-ref/pipeline.safetensors"),
    }[family]
    r = load_file(str(FIX / ref))
    pipe = cls.from_pretrained(FIX / folder, torch_dtype=torch.float32)
    if bf16:
        in_bf16(pipe.unet if family == "sdxl" else pipe.transformer)
    steps = []

    def record(p, i, t, kw):
        x = kw["latents"].clone()
        steps.append(unpack(x, 16, 24) if family == "flux" else x)
        return {}

    noise = r["noise"].clone()
    kw = dict(prompt=PROMPT, height=32, width=48, num_inference_steps=10, output_type="np", callback_on_step_end=record)
    with torch.no_grad():
        if family == "sdxl":
            pipe(guidance_scale=5.0, latents=noise, **kw)
        elif family == "sd3":
            pipe(negative_prompt="", guidance_scale=5.0, latents=noise, max_sequence_length=256, **kw)
        else:
            pipe(guidance_scale=3.5, latents=pack(noise), max_sequence_length=512, **kw)
    want = r["latents"]
    return [float((s.float() - w).abs().max() / w.abs().max()) for s, w in zip(steps, want)]


def main():
    for family in ("sdxl", "sd3", "flux"):
        f32 = run(family, False)
        assert max(f32) < 1e-4, f"{family}: the f32 rerun is not the reference ({max(f32):.2e})"
        bf16 = run(family, True)
        print(f"{family}: PyTorch bf16 vs the f32 reference, every step: " + " ".join(f"{e:.2e}" for e in bf16))
        print(f"{family}: worst {max(bf16):.2e} (the f32 rerun: {max(f32):.1e})")


if __name__ == "__main__":
    main()
