"""Flow-matching scheduler parity fixtures from diffusers: `FlowMatchEulerDiscreteScheduler`
(static shift as SD3 uses it; dynamic shifting with μ, on its own grid and on the σ that
`FluxPipeline` passes), and DPM-Solver++ and UniPC with `use_flow_sigmas` (static shift, and
dynamic shifting with μ), driven like make_scheduler_fixtures.py's cases by the closed-form fake
model v(x, t) = 0.9·x + 0.1·sin(t/100) with `prediction_type = flow_prediction`.

Per case: timesteps, sigmas, init_noise_sigma, x_T and the latent after every step, and in the
metadata the config, the `mu` passed to `set_timesteps` and the grid (`scheduler`, or `flux`
for σ = linspace(1, 1/n, n)).

Run: tools/reference/.venv/bin/python tools/reference/make_flow_scheduler_fixtures.py
Writes tests/fixtures/schedulers/flow_*.safetensors.
"""

import json

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from make_scheduler_fixtures import OUT, SHAPE, fake_eps


def run_case(name, kind, steps, mu=None, grid="scheduler", **cfg):
    cls = {
        "flow_euler": FlowMatchEulerDiscreteScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
    }[kind]
    if kind != "flow_euler":
        cfg = dict(cfg, use_flow_sigmas=True, prediction_type="flow_prediction")
        if mu is not None:
            cfg.update(use_dynamic_shifting=True, time_shift_type="exponential")
    elif mu is not None:
        cfg.update(use_dynamic_shifting=True)
    sched = cls(**cfg)
    kwargs = {}
    if mu is not None:
        kwargs["mu"] = mu
    if grid == "flux":
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    sched.set_timesteps(steps, **kwargs)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    init = float(getattr(sched, "init_noise_sigma", 1.0))
    x = x_t * init
    latents = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        v = fake_eps(model_in, t)
        x = sched.step(v, t, x, return_dict=True).prev_sample
        latents.append(x.clone())
    tensors = {
        "x_T": x_t.contiguous(),
        "timesteps": sched.timesteps.to(torch.float64).contiguous(),
        "latents": torch.stack(latents).contiguous(),
        "init_noise_sigma": torch.tensor([init], dtype=torch.float64),
        "sigmas": torch.as_tensor(sched.sigmas).to(torch.float64).contiguous(),
    }
    meta = {
        "kind": kind,
        "steps": str(steps),
        "config": json.dumps(cfg, sort_keys=True),
        "step_kwargs": "{}",
        "mu": "" if mu is None else repr(mu),
        "grid": grid,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    }
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata=meta)
    return name


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for n in (1, 4, 10):
        cases.append(run_case(f"flow_euler_shift1_{n}", "flow_euler", n))
        cases.append(run_case(f"flow_euler_shift3_{n}", "flow_euler", n, shift=3.0))
    for n in (4, 10):
        cases.append(run_case(f"flow_euler_mu_{n}", "flow_euler", n, mu=0.8))
        cases.append(run_case(f"flow_euler_flux_{n}", "flow_euler", n, mu=1.1, grid="flux"))
    cases.append(run_case("flow_euler_flux_static_10", "flow_euler", 10, shift=3.0, grid="flux"))
    for kind in ("dpmpp_2m", "unipc"):
        for n in (1, 4, 10):
            cases.append(run_case(f"flow_{kind}_shift3_{n}", kind, n, flow_shift=3.0))
        cases.append(run_case(f"flow_{kind}_mu_10", kind, 10, mu=0.8))
    print(f"wrote {len(cases)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
