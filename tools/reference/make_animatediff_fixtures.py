"""AnimateDiff parity fixtures from diffusers (`MotionAdapter`, `UNetMotionModel`,
`AnimateDiffPipeline`), for ml/models/tests/animatediff_parity.rs and tests/e2e/animatediff.rs.

Two tiny motion adapters for the tiny SD pipeline's UNet (tests/fixtures/tiny-sd: channels
32/64, two layers per block, 8 norm groups):
- tests/fixtures/tiny-motion/: a diffusers `MotionAdapter` folder at diffusers' own test sizes
  (4 heads, motion_norm_num_groups 2, which `UNetMotionModel` ignores: its modules take the
  UNet's 8 groups), a mid-block module, motion_max_seq_length 8;
- tests/fixtures/tiny-motion-original.safetensors: a v1-style adapter (8 heads, no mid-block
  module, 24 positions) in the original AnimateDiff checkpoints' layout (`temporal_transformer`,
  `attention_blocks.{0,1}` each with its `pos_encoder.pe`, `norms.{0,1}`, `ff_norm`).

References in tests/fixtures/animatediff-ref/:
- forward.safetensors: `UNetMotionModel.from_unet2d(unet, adapter)` on a 2×4×5×12×8 latent
  (non-square) at t = 421 with two contexts, for both adapters (`out`, `out_original`);
- loop.safetensors: `AnimateDiffPipeline` with DDIM on linear betas (AnimateDiff's), 10 steps,
  CFG 7.5, 5 frames of 24×16: every step's latents, the initial noise, the decoded frames;
- freeinit.safetensors: the same with `enable_free_init(num_iters=3)` (Butterworth), 4 steps a
  pass; freeinit_fast.safetensors: DPM-Solver++ 2M with coarse-to-fine (`use_fast_sampling`,
  passes of 2, 4 and 6 steps: the solver's history must start over each pass) and the Gaussian
  filter. `noise` holds the initial noise then each pass's fresh noise, in the order drawn;
- controlnet.safetensors: `AnimateDiffControlNetPipeline` with the tiny ControlNet
  (tests/fixtures/tiny-controlnet) and one control frame per video frame (written as PNGs to
  animatediff-ref/control/, which the graph loads as a folder of frames), DDIM, 6 steps.

Run: tools/reference/.venv/bin/python tools/reference/make_animatediff_fixtures.py
"""

import json
import pathlib

import diffusers
import numpy as np
import PIL.Image
import torch
import diffusers.pipelines.free_init_utils as free_init_utils
from diffusers import (
    AnimateDiffControlNetPipeline,
    AnimateDiffPipeline,
    ControlNetModel,
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SD = FIX / "tiny-sd"
REF = FIX / "animatediff-ref"
PROMPT = "a cat walking, best quality"
NEGATIVE = "blurry, lowres"


def random_(model, seed, scale=0.05):
    """Every parameter random (the adapter's proj_out starts at zero in diffusers), small enough
    that the tiny loop stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def to_original(name):
    """diffusers' motion-adapter name → the original checkpoints' (inverse of ours)."""
    head, sep, rest = name.partition(".motion_modules.")
    if not sep:
        return name
    index, _, inner = rest.partition(".")
    inner = "." + inner
    for a, b in [
        (".attn1.", ".attention_blocks.0."),
        (".attn2.", ".attention_blocks.1."),
        (".norm1.", ".norms.0."),
        (".norm2.", ".norms.1."),
        (".norm3.", ".ff_norm."),
    ]:
        inner = inner.replace(a, b)
    return f"{head}.motion_modules.{index}.temporal_transformer{inner}"


def original_state(adapter):
    out = {}
    for k, v in adapter.state_dict().items():
        if k.endswith("pos_embed.pe"):
            base = k[: -len("pos_embed.pe")]
            for i in (0, 1):
                out[to_original(f"{base}attn{i + 1}.pos_encoder.pe")] = v.clone()
            continue
        out[to_original(k)] = v.contiguous()
    return out


def generate(pipe, name, noise, steps, extra_noise=(), metadata=None, num_frames=5, **kw):
    """Runs `pipe` on the noise with the fixtures' prompt and size; saves every step's latents,
    the noise (then `extra_noise`, as drawn) and the decoded frames as `name`."""
    rec = Recorder()
    with torch.no_grad():
        frames = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            num_frames=num_frames,
            height=24,
            width=16,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=noise.clone(),
            output_type="np",
            callback_on_step_end=rec,
            **kw,
        ).frames
    save_file(
        {
            "latents": torch.stack(rec.latents).contiguous(),
            "noise": torch.cat([noise, *extra_noise]).contiguous(),
            "frames": torch.from_numpy(np.ascontiguousarray(frames)).float().contiguous(),
        },
        str(REF / f"{name}.safetensors"),
        metadata={"diffusers": diffusers.__version__, **(metadata or {})},
    )
    print(name, "steps", len(rec.latents))


class Recorder:
    def __init__(self):
        self.latents = []

    def __call__(self, pipe, i, t, kwargs):
        self.latents.append(kwargs["latents"].clone())
        return kwargs


def main():
    REF.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(SD / "unet").eval()
    groups = unet.config.norm_num_groups
    adapter = random_(
        MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=2,
            motion_norm_num_groups=2,
            motion_num_attention_heads=4,
            motion_max_seq_length=8,
            use_motion_mid_block=True,
        ),
        1,
    ).eval()
    adapter.save_pretrained(FIX / "tiny-motion", safe_serialization=True)
    v1 = random_(
        MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=2,
            motion_norm_num_groups=groups,
            motion_num_attention_heads=8,
            motion_max_seq_length=24,
            use_motion_mid_block=False,
        ),
        2,
    ).eval()
    save_file(original_state(v1), str(FIX / "tiny-motion-original.safetensors"))

    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 5, 12, 8), generator=g)
    ctx = torch.randn((2, 7, 32), generator=g)
    out = {"x": x, "context": ctx}
    with torch.no_grad():
        for name, a in [("out", adapter), ("out_original", v1)]:
            model = UNetMotionModel.from_unet2d(unet, a).eval()
            # The pipeline repeats the text per frame; the model takes it that way.
            per_frame = ctx.repeat_interleave(repeats=x.shape[2], dim=0)
            out[name] = model(x, 421, per_frame).sample.contiguous()
    save_file(out, str(REF / "forward.safetensors"), metadata={"t": "421"})

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="linspace",
    )
    pipe = AnimateDiffPipeline(
        vae=AutoencoderKL.from_pretrained(SD / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(SD / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(SD / "tokenizer"),
        unet=unet,
        motion_adapter=adapter,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, 5, 12, 8), generator=torch.Generator().manual_seed(99))
    generate(pipe, "loop", noise, 10, metadata={"scheduler": json.dumps(dict(scheduler.config))})

    linear = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1)
    dpm = DPMSolverMultistepScheduler(**linear)
    for name, sched, steps, kw in [
        ("freeinit", scheduler, 4, dict(num_iters=3, method="butterworth")),
        ("freeinit_fast", dpm, 6, dict(num_iters=3, use_fast_sampling=True, method="gaussian", spatial_stop_frequency=0.3)),
    ]:
        pipe.scheduler = sched
        pipe.enable_free_init(**kw)
        drawn = []
        gen = torch.Generator().manual_seed(7)

        def fresh(shape, generator=None, device=None, dtype=None, **_):
            z = torch.randn(shape, generator=gen, dtype=torch.float32)
            drawn.append(z.clone())
            return z

        free_init_utils.randn_tensor = fresh
        generate(pipe, name, noise, steps, drawn, metadata={"scheduler": json.dumps(dict(sched.config))})
        pipe.disable_free_init()

    control_dir = REF / "control"
    control_dir.mkdir(exist_ok=True)
    images = []
    for i in range(5):
        y, x = np.mgrid[0:24, 0:16]
        img = np.stack([(x * 15 + i * 40) % 256, (y * 10) % 256, ((x + y + 3 * i) * 7) % 256], -1).astype(np.uint8)
        PIL.Image.fromarray(img).save(control_dir / f"frame{i}.png")
        images.append(PIL.Image.fromarray(img))
    cpipe = AnimateDiffControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet,
        motion_adapter=adapter,
        controlnet=ControlNetModel.from_pretrained(FIX / "tiny-controlnet"),
        scheduler=scheduler,
    )
    cpipe.set_progress_bar_config(disable=True)
    generate(cpipe, "controlnet", noise, 6, conditioning_frames=images)

if __name__ == "__main__":
    main()
