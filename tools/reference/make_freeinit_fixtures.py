"""FreeInit's frequency filters and noise re-initialisation from diffusers (`FreeInitMixin`),
for ml/sampling/tests/free_init.rs.

Calls `_get_free_init_freq_filter` and `_apply_freq_filter` (neither reads `self`) for each
filter kind on a (1, 2, 5, 6, 7) latent (odd and even axes, so the FFT shifts are exercised),
in float64; the filters are float32, as diffusers makes them. diffusers has no box filter:
that one comes from the FreeInit authors' `freeinit_utils.py` (TianxingWu/FreeInit, commit
410286d), from a checkout in tools/reference/.cache/FreeInit:
  mkdir -p tools/reference/.cache/FreeInit && git -C <mirror of TianxingWu/FreeInit> show \
      410286d:freeinit_utils.py > tools/reference/.cache/FreeInit/freeinit_utils.py
Run: tools/reference/.venv/bin/python tools/reference/make_freeinit_fixtures.py
"""

import importlib.util
import pathlib

import diffusers
import torch
from diffusers.pipelines.free_init_utils import FreeInitMixin
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
AUTHORS = pathlib.Path(__file__).resolve().parent / ".cache" / "FreeInit" / "freeinit_utils.py"
OUT = ROOT / "tests" / "fixtures" / "video-ref" / "free_init.safetensors"

CASES = {
    "butterworth": (4.0, 0.25, 0.25),
    "gaussian": (4.0, 0.3, 0.5),
    "ideal": (4.0, 0.25, 0.25),
    "butterworth_order2": (2.0, 0.4, 0.2),
}

# (d_s, d_t): Python rounds half to even, so 0.25 of 2 frames keeps none of them.
BOX = {"box": (0.25, 0.25), "box_wide": (0.5, 1.0), "box_half": (0.25, 0.75)}


def authors_box():
    spec = importlib.util.spec_from_file_location("freeinit_utils", AUTHORS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.box_low_pass_filter


def main():
    g = torch.Generator().manual_seed(0)
    shape = (1, 2, 5, 6, 7)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    tensors = {"x": x, "noise": noise}
    for name, (order, d_s, d_t) in CASES.items():
        kind = name.split("_")[0]
        filt = FreeInitMixin._get_free_init_freq_filter(None, shape, "cpu", kind, order, d_s, d_t)
        tensors[f"{name}.filter"] = filt
        tensors[f"{name}.mixed"] = FreeInitMixin._apply_freq_filter(None, x, noise, filt)
    box = authors_box()
    for name, (d_s, d_t) in BOX.items():
        tensors[f"{name}.filter"] = box(shape, d_s=d_s, d_t=d_t)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(OUT),
        metadata={
            "cases": repr(CASES),
            "box": repr(BOX),
            "freeinit": "410286d",
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        },
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
