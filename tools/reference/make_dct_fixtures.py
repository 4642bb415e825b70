"""Cinemo's DCT noise initialisation (DCTInit), from the authors' code, for
ml/sampling/tests/dct.rs.

Runs `dct_low_pass_filter` and `exchanged_mixed_dct_freq` from the authors' `utils.py`
(maxin-cn/Cinemo, commit 7cd7f27; the two functions are taken out of the file with `ast`,
because importing it pulls in tensorboard and the rest of their training code) on tiny
random tensors, the way `pipelines/animation.py` calls them: the image latent repeated over
the frames and noised to timestep 975 by diffusers' DDIMScheduler with linear betas
(`scheduler.add_noise`), mixed with the noise through a 3-D orthonormal DCT (torch-dct), in
float64. The transform alone is also recorded, and checked here against scipy's `dctn`.

Needs the checkout's utils.py in tools/reference/.cache/Cinemo:
  mkdir -p tools/reference/.cache/Cinemo && git -C <mirror of maxin-cn/Cinemo> archive \
      7cd7f27 utils.py | tar -x -C tools/reference/.cache/Cinemo
and torch-dct (setup.sh installs it).
Run: tools/reference/.venv/bin/python tools/reference/make_dct_fixtures.py
"""

import ast
import pathlib

import numpy as np
import scipy.fft
import torch
import torch_dct
from diffusers import DDIMScheduler
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
UTILS = HERE / ".cache" / "Cinemo" / "utils.py"
OUT = ROOT / "tests" / "fixtures" / "video-ref" / "dct.safetensors"


def authors_functions():
    tree = ast.parse(UTILS.read_text())
    wanted = {"dct_low_pass_filter", "exchanged_mixed_dct_freq"}
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {n.name for n in body} == wanted, "utils.py lacks the DCT functions"
    ns = {"torch": torch, "torch_dct": torch_dct}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(UTILS), "exec"), ns)
    return ns["dct_low_pass_filter"], ns["exchanged_mixed_dct_freq"]


def main():
    low_pass, mix = authors_functions()
    g = torch.Generator().manual_seed(0)
    # The transform: a non-cubic (B, C, F, H, W) block.
    x = torch.randn(2, 3, 4, 6, 10, generator=g, dtype=torch.float64)
    dct = torch_dct.dct_3d(x, "ortho")
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(2, 3, 4))
    assert np.abs(dct.numpy() - ref).max() < 1e-12, "torch-dct and scipy disagree"

    # DCTInit as animation.py runs it (15 frames there; 5 here), cutoff 0.23, t = 975.
    frames, cutoff, t = 5, 0.23, 975
    base = torch.randn(1, 4, 1, 9, 13, generator=g, dtype=torch.float64)
    noise = torch.randn(1, 4, frames, 9, 13, generator=g)  # float32, as theirs
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    repeated = base.repeat(1, 1, frames, 1, 1).contiguous()
    mask = low_pass(dct_coefficients=base, percentage=cutoff)
    noised = scheduler.add_noise(
        original_samples=repeated, noise=noise, timesteps=torch.full((1,), t).long()
    )
    z_t = mix(noise=noise, base_content=noised, LPF_3d=mask)

    tensors = {
        "x": x,
        "dct": dct,
        "base": base,
        "noise": noise,
        "noised": noised.to(torch.float64),
        "mask": mask,
        "z_t": z_t.to(torch.float64),
        "alpha_bar": scheduler.alphas_cumprod[t : t + 1].to(torch.float64),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(OUT),
        metadata={
            "cutoff": str(cutoff),
            "timestep": str(t),
            "cinemo": "7cd7f2733025d5bc81320f4b596adfd6dc81268f",
            "torch": torch.__version__,
            "torch_dct": "0.1.6",
        },
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
