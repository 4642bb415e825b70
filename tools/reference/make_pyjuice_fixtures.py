"""pyjuice circuits and their exact likelihoods, for the `.jpc` converter
(tools/convert/pyjuice_circuit.py).

Builds with pyjuice 2.6.3 (the library the Tiramisu authors' circuits come from; its CPU
import needs numba, and matplotlib only for plotting, stubbed here) two initialised circuits
and saves them with `pyjuice.save`:

* tests/fixtures/pc-ref/hclt.jpc: an HCLT over 5 variables of 4 values, 3 latents;
* tests/fixtures/pc-ref/pd.jpc: a Poon-Domingos circuit over a 2×4 grid of 3 values, block size
  2, homogeneous parameters tied (tied input and sum nodes);

and records in tests/fixtures/pc-ref/{hclt,pd}.safetensors every assignment `x` and its
log-likelihood `logp`, computed here block by block from the pyjuice node objects (pyjuice's
own forward pass needs a GPU: Triton kernels). The converter expands blocks into single nodes,
so the two computations share no code.

Run: tools/reference/.venv/bin/python tools/reference/make_pyjuice_fixtures.py
"""

import itertools
import pathlib
import sys
import types

for m in ["matplotlib", "matplotlib.pyplot"]:
    sys.modules.setdefault(m, types.ModuleType(m))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import pyjuice as juice  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "pc-ref"


def params_of(ns):
    while getattr(ns, "_params", None) is None and ns.is_tied():
        ns = ns.get_source_ns()
    return ns._params.double()


def log_likelihoods(root, x):
    vals = {}
    for ns in root:
        if ns.is_input():
            k = ns.dist.num_cats
            p = params_of(ns).reshape(ns.num_nodes, k)
            v = ns.scope.to_list()[0]
            vals[ns] = torch.log(p[:, x[:, v]].t())  # B × nodes
        elif ns.is_prod():
            e = ns.edge_ids
            out = torch.zeros(x.shape[0], ns.num_nodes, dtype=torch.float64)
            for c, ch in enumerate(ns.chs):
                if e.shape[0] == ns.num_node_blocks:
                    idx = (e[:, c:c + 1] * ns.block_size + torch.arange(ns.block_size)).reshape(-1)
                else:
                    idx = e[:, c]
                out += vals[ch][:, idx]
            vals[ns] = out
        else:
            chv = torch.cat([vals[ch] for ch in ns.chs], dim=1)
            w = torch.zeros(ns.num_nodes, chv.shape[1], dtype=torch.float64)
            p = params_of(ns)
            bs, cbs = ns.block_size, ns.ch_block_size
            for e, (i, j) in enumerate(ns.edge_ids.t().tolist()):
                w[i * bs:(i + 1) * bs, j * cbs:(j + 1) * cbs] = p[e]
            vals[ns] = torch.logsumexp(torch.log(w)[None] + chv[:, None, :], dim=2)
    return vals[root][:, 0]


def record(name, root, n, k):
    root.init_parameters()
    juice.save(str(OUT / f"{name}.jpc"), root)
    x = torch.tensor(list(itertools.product(range(k), repeat=n)), dtype=torch.int64)
    logp = log_likelihoods(root, x)
    total = torch.logsumexp(logp, 0).item()
    assert abs(total) < 1e-5, f"{name}: Σp = exp({total})"  # f32 parameters
    save_file({"x": x, "logp": logp}, str(OUT / f"{name}.safetensors"),
              metadata={"pyjuice": juice.__version__ if hasattr(juice, "__version__") else "2.6.3"})
    print(name, "nodes", len(list(root)), "assignments", x.shape[0])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = torch.randint(0, 4, (200, 5))
    record("hclt", juice.structures.HCLT(data, num_latents=3, input_node_params={"num_cats": 4}), 5, 4)
    pd = juice.structures.PD(data_shape=(2, 4), num_latents=2, split_intervals=2,
                             input_node_params={"num_cats": 3}, tie_homogeneous_params=True,
                             block_size=2)
    record("pd", pd, 8, 3)


if __name__ == "__main__":
    main()
