"""Converts a pyjuice circuit (`.jpc`, what `pyjuice.save` writes and the Tiramisu authors
release) to LatentFlow's latentflow-pc-v1 file (ml/pc/src/format.rs), for `tpm.load_circuit`.

  python3 tools/convert/pyjuice_circuit.py lvd_finetuned_pc.jpc circuit.safetensors

Needs only the Python standard library: no pyjuice, torch or numpy. A `.jpc` is a pickle, and
unpickling can run code, so this reads it with an unpickler that accepts nothing but the
handful of classes such a file holds (numpy arrays and dtypes, pyjuice's distribution objects,
as plain records): any other global is refused.

pyjuice stores nodes in blocks; every block becomes its nodes here:
- input nodes (Categorical only): `num_node_blocks × block_size` nodes over the scope's one
  variable, probabilities `params` row by row;
- product nodes: `edge_ids[i, c]` is the block of child c that node block i multiplies, node a
  of the block taking node a of that child block (or, when `edge_ids` has a row per node, the
  child node itself);
- sum nodes: each column (i, j) of `edge_ids` joins every node of block i to every node of
  child block j (the children's blocks numbered one after the other), weight
  `params[e, a, b]` from node a of block i to node b of block j;
- tied nodes (`source_node`) take their source's parameters. External parameters are refused.
The last node is the root.

Size: the file lists every node's children, so a circuit of Tiramisu's released size (a
Poon-Domingos structure with 1024 latents per region, about 10⁸ sum edges) makes a file of a
few GB and takes this pure-Python expansion a long time and much memory; smaller circuits
convert in seconds.
"""

import json
import math
import os
import pathlib
import pickle
import struct
import sys

FORMAT = "latentflow-pc-v1"


class Refused(Exception):
    pass


# --- numpy arrays without numpy -------------------------------------------------------------

STRUCT = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
          "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


class DType:
    def __init__(self, spec="f8", align=False, copy=False):
        self.spec = str(spec).lstrip("<>|=")
        self.order = "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = "<" if state[1] in "|=" else state[1]


class Array:
    def __init__(self, *_):
        self.shape, self.dtype, self.fortran, self.data = (0,), DType(), False, b""

    def __setstate__(self, state):
        if len(state) == 5:
            state = state[1:]
        self.shape, self.dtype, self.fortran, self.data = state
        if isinstance(self.data, list):  # object arrays
            raise Refused("object arrays are not circuit parameters")

    def values(self):
        code = STRUCT.get(self.dtype.spec)
        if code is None:
            raise Refused(f"unsupported array type {self.dtype.spec}")
        n = math.prod(self.shape)
        flat = list(struct.unpack(f"{self.dtype.order}{n}{code}", bytes(self.data)[: n * struct.calcsize(code)]))
        if self.fortran and len(self.shape) > 1:
            flat = fortran_to_c(flat, self.shape)
        return flat

    def nested(self):
        flat = self.values()
        for d in reversed(self.shape[1:]):
            flat = [flat[i:i + d] for i in range(0, len(flat), d)]
        return flat if self.shape else flat[0]


def fortran_to_c(flat, shape):
    out = [0] * len(flat)
    strides_f = [1]
    for d in shape[:-1]:
        strides_f.append(strides_f[-1] * d)
    for c_index in range(len(flat)):
        rest, f_index = c_index, 0
        for axis in reversed(range(len(shape))):
            rest, i = divmod(rest, shape[axis])
            f_index += i * strides_f[axis]
        out[c_index] = flat[f_index]
    return out


def reconstruct(cls, shape, typecode):
    return Array()


def frombuffer(buf, dtype, shape, order):
    a = Array()
    a.shape, a.dtype, a.fortran, a.data = tuple(shape), dtype, order == "F", bytes(buf)
    return a


class Foreign:
    """A pyjuice object (a distribution) as its class name and attributes."""

    name = "object"

    def __init__(self, *args, **kwargs):
        self.state = {"args": args}

    def __setstate__(self, state):
        self.state = dict(getattr(self, "state", {}))
        if isinstance(state, dict):
            self.state.update(state)
        elif isinstance(state, tuple) and state and isinstance(state[-1], dict):
            self.state.update(state[-1])


_FOREIGN = {}


def foreign(name):
    if name not in _FOREIGN:
        _FOREIGN[name] = type(name, (Foreign,), {"name": name})
    return _FOREIGN[name]


def reconstructor(cls, base, state):
    obj = object.__new__(cls) if isinstance(cls, type) and issubclass(cls, Foreign) else Foreign()
    obj.state = {}
    return obj


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return reconstruct
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return frombuffer
        if module == "numpy" and name == "ndarray":
            return Array
        if module == "numpy" and name == "dtype":
            return DType
        if module == "copyreg" and name == "_reconstructor":
            return reconstructor
        if module == "builtins" and name in ("object", "set", "frozenset", "tuple", "list", "dict"):
            return {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}.get(name, object)
        if module.startswith("pyjuice."):
            return foreign(name)
        raise Refused(f"the file asks for `{module}.{name}`, which a pyjuice circuit does not hold")


def unpickle(data):
    import io
    return SafeUnpickler(io.BytesIO(data)).load()


# --- blocks to nodes ------------------------------------------------------------------------

def sizes(info):
    if "num_node_blocks" in info:
        return info["num_node_blocks"], info["block_size"]
    if "num_node_groups" in info:  # older pyjuice
        return info["num_node_groups"], info["group_size"]
    return info["num_nodes"], 1


def convert(nodes_list):
    if not isinstance(nodes_list, list) or not nodes_list:
        raise Refused("not a pyjuice circuit (expected a list of node records)")
    base, count, bsizes = [], [], []
    out_nodes, input_probs, sum_weights = [], [], []
    cards = {}

    def source_params(i):
        seen = set()
        while "params" not in nodes_list[i] and "source_node" in nodes_list[i]:
            if i in seen:
                raise Refused("tied nodes form a cycle")
            seen.add(i)
            i = nodes_list[i]["source_node"]
        if "params" not in nodes_list[i]:
            raise Refused(f"node record {i} has no parameters (initialise the circuit before saving)")
        return nodes_list[i]["params"]

    for idx, info in enumerate(nodes_list):
        blocks, bs = sizes(info)
        n = blocks * bs
        chs = list(info.get("chs", ()))
        if any(c >= idx for c in chs):
            raise Refused(f"node record {idx} names a later child")
        base.append(len(out_nodes))
        count.append(n)
        bsizes.append(bs)
        kind = info.get("type")
        if kind == "Input":
            dist = unpickle(info["dist"]) if isinstance(info["dist"], (bytes, bytearray)) else info["dist"]
            if getattr(dist, "name", "") != "Categorical":
                raise Refused(f"input node record {idx}: only Categorical inputs are supported, not {getattr(dist, 'name', dist)}")
            k = dist.state.get("num_cats")
            scope = list(info["scope"])
            if len(scope) != 1 or not isinstance(k, int):
                raise Refused(f"input node record {idx}: expected one variable and num_cats")
            var = scope[0]
            if cards.setdefault(var, k) != k:
                raise Refused(f"variable {var} has inputs of {cards[var]} and {k} categories")
            probs = source_params(idx).values()
            if len(probs) != n * k:
                raise Refused(f"input node record {idx}: {len(probs)} parameters for {n} nodes of {k}")
            for a in range(n):
                out_nodes.append({"input": var})
                input_probs.extend(probs[a * k:(a + 1) * k])
        elif kind == "Product":
            edges = info["edge_ids"].nested()
            rows = len(edges)
            for a in range(n):
                if rows == blocks:  # block-sparse: node a of the block takes node a of each child block
                    i, off = divmod(a, bs)
                    children = []
                    for c, ch in enumerate(chs):
                        if bsizes[ch] != bs:
                            raise Refused(f"product record {idx}: child block size {bsizes[ch]} ≠ {bs}")
                        children.append(base[ch] + edges[i][c] * bs + off)
                elif rows == n:
                    children = [base[ch] + edges[a][c] for c, ch in enumerate(chs)]
                else:
                    raise Refused(f"product record {idx}: edge_ids has {rows} rows for {blocks} blocks of {bs}")
                out_nodes.append({"product": children})
        elif kind == "Sum":
            if "external_params" in info:
                raise Refused(f"sum record {idx} has external parameters, which a file cannot give")
            edges = info["edge_ids"].nested() if isinstance(info["edge_ids"], Array) else info["edge_ids"]
            parents, childs = edges
            cbs = bsizes[chs[0]]
            if any(bsizes[c] != cbs for c in chs):
                raise Refused(f"sum record {idx}: children of different block sizes")
            starts, total = [], 0
            for c in chs:
                starts.append(total)
                total += count[c] // cbs
            def child_base(j):
                for c, s in reversed(list(zip(chs, starts))):
                    if j >= s:
                        return base[c] + (j - s) * cbs
                raise Refused(f"sum record {idx}: child block {j} out of range")
            params = source_params(idx).values()
            if len(params) != len(parents) * bs * cbs:
                raise Refused(f"sum record {idx}: {len(params)} parameters for {len(parents)} edge blocks")
            per = [([], []) for _ in range(n)]
            for e, (i, j) in enumerate(zip(parents, childs)):
                cb = child_base(j)
                for a in range(bs):
                    for b in range(cbs):
                        w = params[(e * bs + a) * cbs + b]
                        kids, ws = per[i * bs + a]
                        kids.append(cb + b)
                        ws.append(w)
            for a, (kids, ws) in enumerate(per):
                if not kids:
                    raise Refused(f"sum record {idx}: node {a} has no children")
                total_w = sum(ws)
                if not total_w > 0:
                    raise Refused(f"sum record {idx}: node {a} has no positive weight")
                out_nodes.append({"sum": kids})
                sum_weights.extend(w / total_w for w in ws)
        else:
            raise Refused(f"node record {idx} has unknown type {kind!r}")
    if count[-1] != 1:
        raise Refused(f"the root record has {count[-1]} nodes; a circuit has one root")
    nvars = max(cards) + 1 if cards else 0
    missing = [v for v in range(nvars) if v not in cards]
    if missing:
        raise Refused(f"variables {missing[:5]} have no input nodes")
    return [cards[v] for v in range(nvars)], out_nodes, input_probs, sum_weights


def write(path, cards, nodes, input_probs, sum_weights):
    structure = json.dumps({"format": FORMAT, "cards": cards, "nodes": nodes}, separators=(",", ":"))
    a = struct.pack(f"<{len(input_probs)}d", *input_probs)
    b = struct.pack(f"<{len(sum_weights)}d", *sum_weights)
    header = {
        "__metadata__": {"latentflow_pc": structure, "converted_from": "pyjuice"},
        "input_probs": {"dtype": "F64", "shape": [len(input_probs)], "data_offsets": [0, len(a)]},
        "sum_weights": {"dtype": "F64", "shape": [len(sum_weights)], "data_offsets": [len(a), len(a) + len(b)]},
    }
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + a + b)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    try:
        nodes_list = unpickle(src.read_bytes())
        cards, nodes, ip, sw = convert(nodes_list)
    except (Refused, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
        sys.exit(f"{src}: {e}")
    write(dst, cards, nodes, ip, sw)
    print(f"{dst}: {len(cards)} variables, {len(nodes)} nodes, {len(sw)} sum edges")


if __name__ == "__main__":
    main()
