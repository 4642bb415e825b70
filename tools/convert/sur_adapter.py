"""Converts a SUR-adapter checkpoint (the authors' `adapter_checkpoint*.pt`, a torch state dict
of their `Adapter`) to .safetensors for `llm.sur_adapter`.

  python tools/convert/sur_adapter.py adapter_checkpoint1000.pt adapter.safetensors

Needs torch and safetensors (tools/reference/setup.sh installs both). The checkpoint is read
with `weights_only=True`: tensors only, no pickled code runs. The authors encode the adapter
weight β in the checkpoint's folder name (`..._adapterw0.1/`); it is printed and stored in the
file's metadata as `adapter_weight` — give it to the node's `adapter_weight`.
"""

import pathlib
import re
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        sys.exit(f"{src}: not a SUR-adapter state dict (no fc.weight)")
    tensors = {k.removeprefix("module."): v.float().contiguous() for k, v in state.items() if torch.is_tensor(v)}
    meta = {"format": "pt"}
    m = re.search(r"adapterw([0-9.eE+-]+)", str(src.resolve()))
    if m:
        meta["adapter_weight"] = m.group(1).rstrip(".")
        print(f"adapter_weight {meta['adapter_weight']} (from the folder name)")
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(dst)
    print(f"{dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
