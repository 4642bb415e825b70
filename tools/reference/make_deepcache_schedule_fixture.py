"""DeepCache's non-uniform ("quadratic around a center") refresh steps, from the DeepCache package
(`DeepCache/sd/pipeline_stable_diffusion.py`, `sample_from_quad_center`, center 15, pow 1.4,
n = ceil(steps / cache_interval)), for every steps × interval below.

Run: tools/reference/.venv/bin/python tools/reference/make_deepcache_schedule_fixture.py
"""

import json
import math
import pathlib
import warnings

import ast
import importlib.util

import numpy as np


def reference_function():
    """`sample_from_quad_center` from the installed DeepCache package, without importing its
    pipeline module (that needs an older diffusers)."""
    spec = importlib.util.find_spec("DeepCache")
    path = pathlib.Path(spec.origin).parent / "sd" / "pipeline_stable_diffusion.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_from_quad_center")
    namespace = {"np": np}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["sample_from_quad_center"]

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "deepcache_quad.json"


def main():
    warnings.simplefilter("ignore")  # numpy casts complex values to int32 inside
    sample_from_quad_center = reference_function()
    rows = []
    for steps in range(5, 81):
        for interval in range(2, 7):
            n = math.ceil(steps / interval)
            try:
                seq, pow_ = sample_from_quad_center(steps, n, center=15, pow=1.4)
            except ValueError:
                rows.append({"steps": steps, "interval": interval, "refresh": None})
                continue
            rows.append({"steps": steps, "interval": interval, "refresh": sorted(int(i) for i in seq)})
    OUT.write_text(json.dumps(rows))
    print(len(rows), "cases")


if __name__ == "__main__":
    main()
