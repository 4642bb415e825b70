"""Trains the default LoRA of graphs/lora.yaml: it teaches models/tiny-shapes a shape the base
model has never seen, the ring, in the kohya LoRA format (UNet attention, text-encoder attention
and MLP, rank 8). A new shape rather than a new colour: the tiny VAE only reproduces the colours
it was trained on, while it reproduces a ring well.

    tools/reference/.venv/bin/python tools/train/train_lora.py [--steps 3000] [--out FILE]

Half of every batch is rings ("a large red ring on a blue background"), half the base model's
ordinary data (prior preservation), so the LoRA adds the word without changing the rest. Only
the low-rank factors train; the base model is the committed fp16 folder. Seeded like
train_tiny.py: batch i comes from a generator seeded with (seed, 9, i).
"""

import argparse
import pathlib
import random
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402
from train_tiny import SIZE, TEXT_CONFIG, generator, log, to_pixels, tokenize  # noqa: E402

BASE = ROOT / "models" / "tiny-shapes"
DEFAULT_OUT = ROOT / "models" / "loras" / "tiny-shapes-ring.safetensors"
RANK = 8
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class LoraLinear(torch.nn.Module):
    """y = base(x) + up(down(x)), with up starting at zero so training starts from the base."""

    def __init__(self, base: torch.nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.down.weight, std=1.0 / rank)
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def inject(model: torch.nn.Module, targets) -> dict:
    """Replaces the target linears by LoRA ones; returns {module path: LoraLinear}."""
    found = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and any(path.endswith(t) for t in targets):
                lora = LoraLinear(child, RANK)
                setattr(module, child_name, lora)
                found[path] = lora
    return found


def ring_sample(rng: random.Random):
    """A ring (inner radius 0.55 of the outer) of a training colour on another one."""
    colour, background = rng.sample(list(shapes.COLOURS), 2)
    size_word, (lo, hi) = rng.choice([(None, (0.2, 0.26)), ("large", shapes.SIZES["large"])])
    r = rng.uniform(lo, hi) * SIZE
    cx, cy = (rng.uniform(0.42, 0.58) * SIZE for _ in range(2))
    s = shapes.SUPERSAMPLE
    bg = shapes._jitter(shapes.COLOURS[background], rng, 8)
    img = Image.new("RGB", (SIZE * s, SIZE * s), bg)
    d = ImageDraw.Draw(img)
    d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=shapes._jitter(shapes.COLOURS[colour], rng))
    q = 0.55 * r
    d.ellipse([(cx - q) * s, (cy - q) * s, (cx + q) * s, (cy + q) * s], fill=bg)
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    words = [size_word] if size_word else []
    words = [shapes.article((words + [colour])[0])] + words + [colour, "ring", "on", shapes.article(background), background, "background"]
    return np.asarray(img, dtype=np.uint8), " ".join(words)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(BASE / "vae").float().eval()
    unet = UNet2DConditionModel.from_pretrained(BASE / "unet").float()
    text = CLIPTextModel.from_pretrained(BASE / "text_encoder").float()
    tokenizer = CLIPTokenizer.from_pretrained(BASE / "tokenizer", model_max_length=TEXT_CONFIG["max_position_embeddings"])
    scaling = vae.config.scaling_factor
    for p in list(unet.parameters()) + list(text.parameters()) + list(vae.parameters()):
        p.requires_grad_(False)
    unet_loras = inject(unet, UNET_TARGETS)
    text_loras = inject(text, TEXT_TARGETS)
    params = [p for m in list(unet_loras.values()) + list(text_loras.values()) for p in (m.down.weight, m.up.weight)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    ids_empty = tokenize(tokenizer, [""])[0]
    log(f"lora: {len(unet_loras)} UNet and {len(text_loras)} text-encoder linears, rank {RANK}")

    t0 = time.time()
    for step in range(args.steps):
        g = generator(args.seed, 9, step)
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=g)))
        half = args.batch // 2
        rings = [ring_sample(rng) for _ in range(half)]
        plain = [shapes.sample(rng, SIZE) for _ in range(args.batch - half)]
        images = np.stack([im for im, _ in rings] + [np.asarray(im, dtype=np.uint8) for im, _ in plain])
        captions = [c for _, c in rings] + [c for _, c in plain]
        with torch.no_grad():
            z0 = vae.encode(to_pixels(images, "cpu")).latent_dist.sample(g) * scaling
        ids = tokenize(tokenizer, captions)
        drop = torch.rand(args.batch, generator=g) < 0.1
        ids[drop] = ids_empty
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, noise, t)
        for grp in opt.param_groups:
            grp["lr"] = args.lr * min(1.0, (step + 1) / 100)
        pred = unet(zt, t, text(ids).last_hidden_state).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step + 1 == args.steps:
            rate = (time.time() - t0) / (step + 1)
            log(f"lora {step}/{args.steps} loss {loss.item():.4f} ({rate:.2f} s/step, {rate * (args.steps - step - 1) / 60:.0f} min left)")

    # kohya layout: lora_unet_<path with _>.lora_down.weight / .lora_up.weight / .alpha (α = r).
    out = {}
    for prefix, loras in (("lora_unet_", unet_loras), ("lora_te_", text_loras)):
        for path, m in loras.items():
            if prefix == "lora_te_" and not path.startswith("text_model."):
                path = "text_model." + path  # kohya names CLIP modules from CLIPTextModel's root
            key = prefix + path.replace(".", "_")
            out[f"{key}.lora_down.weight"] = m.down.weight.detach().half().contiguous()
            out[f"{key}.lora_up.weight"] = m.up.weight.detach().half().contiguous()
            out[f"{key}.alpha"] = torch.tensor(float(RANK)).half()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(args.out), metadata={"ss_network_dim": str(RANK), "latentflow_recipe": f"train_lora.py --steps {args.steps} --batch {args.batch} --lr {args.lr} --seed {args.seed}"})
    log(f"lora: wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
