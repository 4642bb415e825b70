"""Scheduler parity fixtures from diffusers (the reference implementation).

Each case builds a diffusers scheduler from an explicit Stable Diffusion 1.x configuration and
drives it with a closed-form fake model, eps(x, t) = 0.9 * x + 0.1 * sin(t / 100), so the Rust
tests can recompute every model call exactly. Stochastic schedulers take their noise from a
queue of pre-recorded tensors (diffusers' `randn_tensor` is patched to pop from it), and that
noise is saved too. Per case the fixture records: timesteps, sigmas (when the scheduler has
them), init_noise_sigma, x_T, the injected noise and the latent after every step.

Run: tools/reference/setup.sh, then
    tools/reference/.venv/bin/python tools/reference/make_scheduler_fixtures.py
Writes tests/fixtures/schedulers/*.safetensors (a few KiB each).
"""

import json
import math
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "schedulers"

# Stable Diffusion 1.x scheduler_config.json values, pinned.
SD_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)

SHAPE = (1, 2, 3, 4)  # non-square on purpose


def fake_eps(x, t):
    return 0.9 * x + 0.1 * math.sin(float(t) / 100.0)


class NoiseQueue:
    """Replaces diffusers' randn_tensor: returns recorded noise, in order."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.used = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None, **kwargs):
        z = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        self.used.append(z.clone())
        return z.to(dtype or torch.float32)


def patch_randn(queue):
    import diffusers.schedulers.scheduling_ddim as m_ddim
    import diffusers.schedulers.scheduling_ddpm as m_ddpm
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as m_ea
    import diffusers.schedulers.scheduling_euler_discrete as m_e
    import diffusers.schedulers.scheduling_lcm as m_lcm

    for m in (m_ddim, m_ddpm, m_ea, m_e, m_lcm):
        if hasattr(m, "randn_tensor"):
            m.randn_tensor = queue


def make(kind, **kw):
    cfg = dict(SD_CONFIG)
    cfg.update(kw)
    cls = {
        "ddim": DDIMScheduler,
        "ddpm": DDPMScheduler,
        "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "lcm": LCMScheduler,
        "lms": LMSDiscreteScheduler,
    }[kind]
    if kind in ("ddim", "ddpm", "lcm"):
        cfg.setdefault("clip_sample", False)
    if kind in ("ddim", "lcm"):
        cfg.setdefault("set_alpha_to_one", kind == "lcm")
    return cls(**cfg)


def run_case(name, kind, steps, step_kwargs=None, **cfg):
    queue = NoiseQueue(seed=1234)
    patch_randn(queue)
    sched = make(kind, **cfg)
    sched.set_timesteps(steps)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    x = x_t * sched.init_noise_sigma
    latents = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        eps = fake_eps(model_in, t)
        out = sched.step(eps, t, x, return_dict=True, **(step_kwargs or {}))
        x = out.prev_sample
        latents.append(x.clone())
    tensors = {
        "x_T": x_t.contiguous(),
        "timesteps": sched.timesteps.to(torch.float64).contiguous(),
        "latents": torch.stack(latents).contiguous(),
        "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float64),
    }
    if getattr(sched, "sigmas", None) is not None:
        tensors["sigmas"] = torch.as_tensor(sched.sigmas).to(torch.float64).contiguous()
    if queue.used:
        tensors["noise"] = torch.stack(queue.used).contiguous()
    meta = {
        "kind": kind,
        "steps": str(steps),
        "config": json.dumps(cfg, sort_keys=True),
        "step_kwargs": json.dumps(step_kwargs or {}, sort_keys=True),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata=meta)
    return name


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for pred in ("epsilon", "v_prediction"):
        p = "eps" if pred == "epsilon" else "v"
        for spacing in ("leading", "trailing", "linspace"):
            for n in (1, 4, 10):
                cases.append(run_case(f"ddim_{p}_{spacing}_{n}", "ddim", n, prediction_type=pred, timestep_spacing=spacing))
        cases.append(run_case(f"ddim_{p}_eta05_10", "ddim", 10, step_kwargs={"eta": 0.5}, prediction_type=pred))
        for spacing in ("linspace", "leading", "trailing"):
            for n in (1, 4, 10):
                cases.append(run_case(f"euler_{p}_{spacing}_{n}", "euler", n, prediction_type=pred, timestep_spacing=spacing))
        for n in (4, 10):
            cases.append(run_case(f"euler_{p}_karras_{n}", "euler", n, prediction_type=pred, use_karras_sigmas=True))
        cases.append(run_case(f"euler_a_{p}_10", "euler_a", 10, prediction_type=pred))
        for n in (1, 2, 4, 10):
            cases.append(run_case(f"dpmpp_2m_{p}_{n}", "dpmpp_2m", n, prediction_type=pred))
        for n in (4, 10):
            cases.append(run_case(f"dpmpp_2m_{p}_karras_{n}", "dpmpp_2m", n, prediction_type=pred, use_karras_sigmas=True))
        for n in (1, 2, 4, 10):
            cases.append(run_case(f"unipc_{p}_{n}", "unipc", n, prediction_type=pred))
        cases.append(run_case(f"ddpm_{p}_10", "ddpm", 10, prediction_type=pred))
        for n in (1, 2, 4, 10):
            cases.append(run_case(f"lms_{p}_{n}", "lms", n, prediction_type=pred))
        cases.append(run_case(f"lms_{p}_karras_10", "lms", 10, prediction_type=pred, use_karras_sigmas=True))
    for n in (1, 4):
        cases.append(run_case(f"lcm_eps_{n}", "lcm", n))
    print(f"wrote {len(cases)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
