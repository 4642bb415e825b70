"""CoPaint, as the Tiramisu authors run it, on the tiny ADM model: the reference loop for
ml/sampling's `copaint`.

Runs the authors' `O_DDIMSampler` (their CoPaint copy in UCLA-StarAI/Tiramisu,
`external/CoPaint/guided_diffusion/ddim.py`, commit 62f9b23e) over a 1000-step linear schedule
respaced to 20 steps, with the celeba config's optimisation settings, with and without the adaptive rate, (2 gradient steps, lr 0.02
with the smart and adaptive decay, λ 1e-4), on tests/fixtures/tiny-adm (a learned-sigma
diffusers UNet2DModel; make_unet2d_fixtures.py; its noise estimate shifted to x + 0.005·ε, see
`model_fn`) for a non-square batch of two with different
masks. Records in tests/fixtures/unet2d-ref/copaint{,_adaptive}.safetensors the known image, the masks, the
initial noise, and every step's x_{t−1}, x̂0 and loss, plus the learned-range variance of the
first step (`p_mean_variance`), which Tiramisu's steering reads.

The authors' package is imported from a checkout that is never committed:
  mkdir -p tools/reference/.cache/Tiramisu && git -C <mirror of UCLA-StarAI/Tiramisu> archive \
      62f9b23e external/CoPaint/guided_diffusion | tar -x -C tools/reference/.cache/Tiramisu
Modules it imports that this loop does not use (pyjuice, omegaconf, its logger and config
helpers) are stubbed.

Run: tools/reference/.venv/bin/python tools/reference/make_copaint_fixture.py
"""

import pathlib
import sys
import types

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import UNet2DModel

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1] / "tests" / "fixtures"
COPAINT = HERE / ".cache" / "Tiramisu" / "external" / "CoPaint"


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


BACKOFFS = []


def log(msg, *_, **__):
    if "decreased" in str(msg):
        BACKOFFS.append(msg)


def import_authors():
    for name in ["pyjuice", "tools", "copaint_utils"]:
        stub(name)
    stub("omegaconf", OmegaConf=None)
    stub("tools.utils", instantiate_from_config=None)
    stub("copaint_utils.logger", logging_info=log)
    pkg = types.ModuleType("guided_diffusion")  # skip its __init__ (every sampler's imports)
    pkg.__path__ = [str(COPAINT / "guided_diffusion")]
    sys.modules["guided_diffusion"] = pkg
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.ddim import O_DDIMSampler
    from guided_diffusion.respace import space_timesteps
    return gd, O_DDIMSampler, space_timesteps


class Conf(dict):
    """The flat, dotted-key config the authors' samplers read."""

    def get(self, key, default=None):
        return super().get(key, default)

    def __getattr__(self, key):
        return self[key]


SCALE = 0.005

CONF = Conf({
    "optimize_xt.optimize_xt": True,
    "optimize_xt.num_iteration_optimize_xt": 2,
    "optimize_xt.lr_xt": 0.02,
    "optimize_xt.lr_xt_decay": 1.012,
    "optimize_xt.use_smart_lr_xt_decay": True,
    "optimize_xt.use_adaptive_lr_xt": True,
    "optimize_xt.coef_xt_reg": 0.0001,
    "optimize_xt.coef_xt_reg_decay": 1.01,
    "optimize_xt.mid_interval_num": 1,
    "optimize_xt.filter_xT": False,
    "ddim.ddim_sigma": 0.0,
    "ddim.schedule_params": {"num_inference_steps": 20, "ddpm_num_steps": 20,
                             "schedule_type": "linear"},
    "ddim.schedule_params.ddpm_num_steps": 20,
    "mode": "inpaint",
    "respace_interpolate": False,
    "debug": False,
})


def main():
    gd, O_DDIMSampler, space_timesteps = import_authors()
    for adaptive in (False, True):
        run(gd, O_DDIMSampler, space_timesteps, adaptive)


def run(gd, O_DDIMSampler, space_timesteps, adaptive):
    CONF["optimize_xt.use_adaptive_lr_xt"] = adaptive
    # The adaptive run starts from a rate large enough that the loss grows and the rate backs
    # off (at 0.02 it never does on this model).
    CONF["optimize_xt.lr_xt"] = 20.0 if adaptive else 0.02
    BACKOFFS.clear()
    torch.manual_seed(0)
    unet = UNet2DModel.from_pretrained(ROOT / "tiny-adm").eval()
    betas = gd.get_named_beta_schedule("linear", 1000, use_scale=True)
    sampler = O_DDIMSampler(
        use_timesteps=space_timesteps(1000, "20"), conf=CONF, betas=betas,
        model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
        loss_type=gd.LossType.MSE, rescale_timesteps=False,
    )
    g = torch.Generator().manual_seed(3)
    shape = (2, 3, 16, 24)
    known = (torch.rand(shape, generator=g) * 2 - 1).clamp(-1, 1)
    mask = torch.zeros(2, 1, 16, 24)
    mask[0, :, :, :12] = 1  # left half known
    mask[1, :, 4:12, :] = 1  # a band known
    noise = torch.randn(shape, generator=g)

    def model_fn(x, t, **_):
        # A random network's x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ is ~1/√ᾱ ≈ 158 times its noise at t = 999,
        # clamped nearly everywhere, which leaves the optimisation a handful of pixels and makes
        # every step chaotic. The noise estimate x + 0.005·ε_unet keeps x̂0 of order one, as a
        # trained model's is; the variance channels are the network's.
        out = unet(x, t).sample
        return torch.cat([x + SCALE * out[:, :3], out[:, 3:]], dim=1)

    steps = {"x": [], "x0": [], "loss": []}
    p_sample = sampler.p_sample

    def recording(*a, **k):
        out = p_sample(*a, **k)
        steps["x"].append(out["x_prev"].detach().clone())
        steps["x0"].append(out["pred_x0"].detach().clone())
        steps["loss"].append(out["loss"])
        return out

    sampler.p_sample = recording
    kwargs = {"gt": known, "gt_keep_mask": mask}
    result = sampler.p_sample_loop(model_fn, shape, noise=noise.clone(), model_kwargs=kwargs,
                                   conf=CONF, progress=False, device=torch.device("cpu"))
    with torch.no_grad():
        t0 = torch.tensor([19, 19])
        pmv = sampler.p_mean_variance(model_fn, noise.clone(), t0, model_kwargs=kwargs)
    out = {
        "known": known, "mask": mask, "noise": noise,
        "steps": torch.stack(steps["x"]).contiguous(),
        "x0": torch.stack(steps["x0"]).contiguous(),
        "loss": torch.tensor(steps["loss"], dtype=torch.float64),
        "sample": result["sample"].contiguous(),
        "variance_at_noise": pmv["variance"].contiguous(),
        "timestep_map": torch.tensor(sampler.timestep_map, dtype=torch.int64),
        "alphas_cumprod": torch.from_numpy(np.asarray(sampler.alphas_cumprod)),
        "lr": torch.tensor([CONF["optimize_xt.lr_xt"]], dtype=torch.float64),
        "backoffs": torch.tensor([len(BACKOFFS)], dtype=torch.int64),
    }
    name = "copaint_adaptive" if adaptive else "copaint"
    save_file(out, str(ROOT / "unet2d-ref" / f"{name}.safetensors"),
              metadata={"torch": torch.__version__, "tiramisu": "62f9b23e"})
    print("steps", len(steps["x"]), "backoffs", len(BACKOFFS), "losses", [round(v, 3) for v in steps["loss"][:5]], "...")


if __name__ == "__main__":
    main()
