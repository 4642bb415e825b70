"""The PyTorch side of the full-size memory and SDXL step benchmark (see
ml/models/benches/big_models.rs and tools/bench/big_models.sh).

    tools/reference/.venv/bin/python tools/reference/bench_big_models.py DIR make
writes random bf16 weights (N(0, 0.02), norms 1) at published configs to DIR: sdxl-unet/ (SDXL
base 1.0's UNet, 2.57 B parameters, as a diffusers folder with LatentFlow's built-in config) and
sd35m/ (SD3.5 medium's transformer, all 24 blocks, 2.24 B), flux-width/ (FLUX.1-dev's width with
2 of its 19 double- and 4 of its 38 single-stream blocks).
    tools/reference/.venv/bin/python tools/reference/bench_big_models.py DIR load NAME
loads one of them with diffusers in bf16 and prints the peak RSS against the weight file;
    tools/reference/.venv/bin/python tools/reference/bench_big_models.py DIR step [threads]
times one SDXL UNet step (CFG batch 2 of a 4×64×64 latent, 77 tokens of 2048, pooled and time
ids), f32 weights and bf16 weights, the mean of two after a warm-up.
"""

import json
import pathlib
import resource
import sys
import time

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_bf16(model):
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, p in model.state_dict().items():
        if "norm" in k and k.endswith("weight") and p.ndim == 1:
            out[k] = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            out[k] = (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16)
    return out


def make(d):
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    cfg = json.loads((ROOT / "ml/models/configs/sdxl/unet.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    out = d / "sdxl-unet"
    out.mkdir(parents=True, exist_ok=True)
    save_file(random_bf16(unet), str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    with init_empty_weights():
        sd3 = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
        )
    out = d / "sd35m"
    out.mkdir(parents=True, exist_ok=True)
    save_file(random_bf16(sd3), str(out / "diffusion_pytorch_model.safetensors"))
    sd3.save_config(out)
    with init_empty_weights():
        flux = FluxTransformer2DModel(
            in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        )
    out = d / "flux-width"
    out.mkdir(parents=True, exist_ok=True)
    save_file(random_bf16(flux), str(out / "diffusion_pytorch_model.safetensors"))
    flux.save_config(out)
    print("wrote", d)


def load(d, name):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    cls = {"sdxl-unet": UNet2DConditionModel, "sd35m": SD3Transformer2DModel, "flux-width": FluxTransformer2DModel}[name]
    before = peak_gib()
    m = cls.from_pretrained(d / name, torch_dtype=torch.bfloat16)
    size = (d / name / "diffusion_pytorch_model.safetensors").stat().st_size / 2**30
    params = sum(p.numel() for p in m.parameters()) / 1e9
    loaded = peak_gib()
    # diffusers may leave the weights memory-mapped and untouched: read every one, as a step will.
    with torch.no_grad():
        for p in m.parameters():
            p.float().sum()
    print(f"diffusers {name}: {params:.2f} B parameters, file {size:.2f} GiB, peak RSS {loaded:.2f} GiB after "
          f"from_pretrained, {peak_gib():.2f} GiB ({peak_gib() / size:.2f}× the file) once every weight is read; "
          f"{before:.2f} GiB before loading")


def step(d, threads):
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 77, 2048, generator=g)
    added = {"text_embeds": torch.randn(2, 1280, generator=g), "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2)}
    for dtype in (torch.float32, torch.bfloat16):
        m = UNet2DConditionModel.from_pretrained(d / "sdxl-unet", torch_dtype=dtype).eval()
        args = (x.to(dtype), torch.tensor([500, 500]), text.to(dtype))
        kw = {"added_cond_kwargs": {k: v.to(dtype) for k, v in added.items()}}
        with torch.no_grad():
            m(*args, **kw)
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                m(*args, **kw)
                runs.append(time.perf_counter() - t0)
        print(f"diffusers sdxl-unet {str(dtype)[6:]:8} step {sum(runs) / 2:8.3f} s (mean of {[round(r, 3) for r in runs]})")
        del m


if __name__ == "__main__":
    d = pathlib.Path(sys.argv[1])
    what = sys.argv[2]
    if what == "make":
        make(d)
    elif what == "load":
        load(d, sys.argv[3])
    else:
        step(d, int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
