"""Hallucination-score fixture: numpy's population variance over the last k steps of a random
x̂0 trajectory, averaged over elements, as `np.var(all_predx0[:, -k:], axis=1)` in the paper's
code (Aithal et al. 2024, gaussian_experiments/train_toy_filter.py).

Run: tools/reference/.venv/bin/python tools/reference/make_hallucination_fixtures.py
"""

import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hallucination.safetensors"


def main():
    rng = np.random.default_rng(0)
    steps, n, k = 15, 3, 10
    traj = rng.normal(size=(steps, n, 2, 2, 2)).astype(np.float32)
    traj[:, 1] *= 0.01  # one sample that has settled
    per_sample = traj.reshape(steps, n, -1).transpose(1, 0, 2)  # n × steps × d
    scores = np.var(per_sample[:, -k:], axis=1).mean(axis=1).astype(np.float32)
    save_file({"x0": torch.from_numpy(traj), "scores": torch.from_numpy(scores)}, str(OUT), metadata={"last_k": str(k)})
    print(scores)


if __name__ == "__main__":
    main()
