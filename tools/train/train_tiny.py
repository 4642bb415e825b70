"""Trains LatentFlow's default model: a tiny Stable Diffusion 1.x-layout pipeline that draws
coloured shapes (see shapes.py for the data and the caption grammar).

    tools/reference/setup.sh                      # the pinned torch/diffusers/transformers venv
    tools/reference/.venv/bin/python tools/train/train_tiny.py all

Phases (each resumable; `all` runs them in order):

    vae     AutoencoderKL (16, 32, 64, 64 channels: 64×64 pixels ↔ 8×8×4 latents), L1 + L2
            reconstruction plus a 1e-5 KL term, on freshly drawn batches.
    unet    encodes a fixed, seeded data set once with the trained VAE, then trains the UNet
            (32, 64, 64 channels, cross-attention width 64) together with a 4-layer CLIP text
            encoder from scratch (the real CLIP BPE tokenizer, 49408-row embedding table):
            ε-prediction on SD's scaled-linear schedule, min-SNR-5 weighting, 10 % empty
            captions for classifier-free guidance, EMA of the weights.
    export  writes the diffusers folder (fp16 weights) and a preview grid rendered by diffusers.

Everything is seeded: batch i of a phase is drawn from a generator seeded with (seed, phase, i),
so a resumed run sees the same data. With the same thread count and machine the weights come
out bit-identical. It runs on the CPU (about 1.5 h on one core of this machine) or on a GPU when
one is present.
"""

import argparse
import json
import math
import pathlib
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "tiny-sd" / "tokenizer"
DEFAULT_OUT = ROOT / "models" / "tiny-shapes"
WORK = HERE / ".work"
SIZE = 64

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=SIZE,
)
UNET_CONFIG = dict(
    sample_size=SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 64, 64],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2,
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=8,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    # Captions are short: 32 positions (30 tokens) instead of 77 keep training cheap; the tokenizer
    # config says the same, so every implementation pads to 32.
    max_position_embeddings=32,
    hidden_act="quick_gelu",
    projection_dim=64,
    # SD 1.x's text encoder config carries these legacy ids too (the pooled output is taken at
    # the highest id, the end-of-text token).
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
PREVIEW_PROMPTS = [
    "a red circle on a blue background",
    "a yellow star on a purple background",
    "two small green squares on a white background",
    "a large blue triangle on an orange background",
    "a white circle on the left on a black background",
    "three small red stars on a yellow background",
    "a purple square at the top on a green background",
    "a black star on a white background",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def generator(seed: int, phase: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + phase * 100_000_007 + step)


def to_pixels(images: np.ndarray, device) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W in [-1, 1]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.to(device)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class Ema:
    def __init__(self, modules, decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, decay: float):
        for s, p in zip(self.shadow, self.params):
            s.mul_(decay).add_(p.detach(), alpha=1 - decay)

    def state_dict(self):
        return [s.clone() for s in self.shadow]

    def load(self, shadow):
        for s, v in zip(self.shadow, shadow):
            s.copy_(v)

    @torch.no_grad()
    def copy_to(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def train_vae(args, device):
    from diffusers import AutoencoderKL

    out = WORK / "vae"
    ckpt = WORK / "vae.ckpt"
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=args.vae_lr)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        log(f"vae: resuming at step {start}")
    if start >= args.vae_steps and out.exists():
        log("vae: done already")
        return
    vae.train()
    t0 = time.time()
    for step in range(start, args.vae_steps):
        rng = random.Random(args.seed * 7919 + step)
        images = np.stack([shapes.sample(rng, SIZE)[0] for _ in range(args.vae_batch)])
        x = to_pixels(images, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 200)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator(args.seed, 1, step)
        ).to(device)
        rec = vae.decode(z).sample
        loss_rec = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        # SD's weighting: reconstruction summed over pixels + 1e-5 × KL summed over latents
        # (SD uses 1e-6), both here divided by the pixel count.
        kl = posterior.kl().mean()
        loss = loss_rec + 1e-5 * kl / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step + 1 == args.vae_steps:
            rate = (time.time() - t0) / (step - start + 1)
            log(f"vae {step}/{args.vae_steps} rec {loss_rec.item():.4f} kl {kl.item():.3f} ({rate:.2f} s/step)")
        if (step + 1) % 500 == 0 or step + 1 == args.vae_steps:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    vae.save_pretrained(out)
    log(f"vae: saved {out}")


def tokenize(tokenizer, captions):
    return tokenizer(
        captions, padding="max_length", max_length=TEXT_CONFIG["max_position_embeddings"], truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_dataset(args, device):
    from diffusers import AutoencoderKL

    path = WORK / f"latents-{args.images}.pt"
    if path.exists():
        return torch.load(path)
    vae = AutoencoderKL.from_pretrained(WORK / "vae").to(device).eval()
    images, captions = shapes.dataset(args.images, args.seed + 1, SIZE)
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(to_pixels(images[i : i + 256], device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / mean.std())
    data = {"mean": mean, "std": std, "captions": captions, "scaling": scaling}
    torch.save(data, path)
    log(f"unet: encoded {len(captions)} images; latent std {mean.std():.4f} → scaling factor {scaling:.5f}")
    return data


def train_unet(args, device):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    data = encode_dataset(args, device)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=TEXT_CONFIG["max_position_embeddings"])
    ids_all = tokenize(tokenizer, data["captions"])
    ids_empty = tokenize(tokenizer, [""])[0]
    scaling = data["scaling"]

    torch.manual_seed(args.seed + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG).to(device)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).to(device)
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    alphas = sched.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)

    embed = [p for n, p in text.named_parameters() if "token_embedding" in n]
    rest = [p for n, p in text.named_parameters() if "token_embedding" not in n]
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()) + rest, "weight_decay": 0.01},
            {"params": embed, "weight_decay": 0.0},
        ],
        lr=args.unet_lr,
    )
    ema = Ema([unet, text], 0.999)
    ckpt = WORK / "unet.ckpt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"])
        ema.load(state["ema"])
        start = state["step"]
        log(f"unet: resuming at step {start}")
    unet.train()
    text.train()
    n = len(data["captions"])
    t0 = time.time()
    for step in range(start, args.unet_steps):
        g = generator(args.seed, 2, step)
        idx = torch.randint(0, n, (args.unet_batch,), generator=g)
        z0 = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=g)) * scaling
        ids = ids_all[idx].clone()
        drop = torch.rand(args.unet_batch, generator=g) < 0.1
        ids[drop] = ids_empty
        t = torch.randint(0, 1000, (args.unet_batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        z0, ids, t, noise = z0.to(device), ids.to(device), t.to(device), noise.to(device)
        zt = sched.add_noise(z0, noise, t)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, args.unet_steps, args.unet_lr, 500)
        ctx = text(ids).last_hidden_state
        pred = unet(zt, t, ctx).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        ema.update(0.0 if step < 500 else min(0.999, (1 + step) / (10 + step)))
        if step % 100 == 0 or step + 1 == args.unet_steps:
            rate = (time.time() - t0) / (step - start + 1)
            eta = rate * (args.unet_steps - step - 1) / 60
            log(f"unet {step}/{args.unet_steps} loss {loss.item():.4f} ({rate:.2f} s/step, {eta:.0f} min left)")
        if (step + 1) % 1000 == 0 or step + 1 == args.unet_steps:
            torch.save(
                {
                    "unet": unet.state_dict(),
                    "text": text.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema.state_dict(),
                    "step": step + 1,
                },
                ckpt,
            )
    ema.copy_to()
    unet.save_pretrained(WORK / "unet")
    text.save_pretrained(WORK / "text_encoder")
    (WORK / "scaling.json").write_text(json.dumps({"scaling_factor": scaling}))
    log("unet: saved EMA weights")


def export(args, device):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = pathlib.Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    scaling = json.loads((WORK / "scaling.json").read_text())["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(WORK / "vae")
    vae.register_to_config(scaling_factor=round(scaling, 5))
    unet = UNet2DConditionModel.from_pretrained(WORK / "unet")
    text = CLIPTextModel.from_pretrained(WORK / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=TEXT_CONFIG["max_position_embeddings"])
    sched = DDIMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")})
    pipe = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text.half(),
        tokenizer=tokenizer,
        unet=unet.half(),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # Local paths do not belong in a committed config.
    for cfg in out.glob("*/config.json"):
        c = json.loads(cfg.read_text())
        c.pop("_name_or_path", None)
        cfg.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    (out / "RECIPE.md").write_text(recipe(args, scaling))
    log(f"export: wrote {out}")

    # A preview rendered by diffusers itself (f32), the reference for what the model draws.
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32, safety_checker=None)
    images = []
    for i, prompt in enumerate(PREVIEW_PROMPTS):
        g = torch.Generator().manual_seed(i)
        img = pipe(prompt, height=SIZE, width=SIZE, num_inference_steps=25, guidance_scale=7.5, generator=g).images[0]
        images.append(np.asarray(img))
    grid = np.concatenate([np.concatenate(images[r * 4 : (r + 1) * 4], axis=1) for r in range(2)], axis=0)
    from PIL import Image

    Image.fromarray(grid).save(out / "preview.png")
    log(f"export: preview grid {out / 'preview.png'}")


def recipe(args, scaling):
    return f"""# tiny-shapes: LatentFlow's default model

A tiny Stable Diffusion 1.x-layout pipeline (diffusers folder, fp16 weights) trained from scratch
by `tools/train/train_tiny.py` on procedurally drawn shapes (`tools/train/shapes.py`). It knows
captions such as "a red circle on a blue background", "two small green squares", "a large
yellow star on the left on a purple background": counts (a, two, three), sizes (small, large),
colours ({", ".join(shapes.COLOURS)}), shapes ({", ".join(shapes.SHAPES)}), positions
({", ".join(shapes.POSITIONS)}) and backgrounds. It draws 64×64 pixels (8×8×4 latents).

| component | architecture |
|---|---|
| VAE | AutoencoderKL, channels {VAE_CONFIG["block_out_channels"]}, 1 layer per block, scaling factor {scaling:.5f} |
| UNet | UNet2DConditionModel, channels {UNET_CONFIG["block_out_channels"]}, 2 layers per block, cross-attention 64 |
| text encoder | CLIPTextModel, 4 layers, width 64, the real CLIP BPE vocabulary (rows of words outside the captions stay at their random initialisation) |

Recipe (seed {args.seed}): VAE {args.vae_steps} steps of batch {args.vae_batch}, Adam lr {args.vae_lr}, L1 + L2
reconstruction + 1e-5 KL (SD's units). UNet and text encoder {args.unet_steps} steps of batch {args.unet_batch} on
{args.images} seeded images, AdamW lr {args.unet_lr} (warm-up 500, cosine to 10 %), ε-prediction,
scaled-linear betas 0.00085–0.012, min-SNR-5 weighting, 10 % empty captions, EMA 0.999.

Reproduce: `tools/reference/setup.sh && tools/reference/.venv/bin/python tools/train/train_tiny.py all`.

Cost, measured when this model was trained: one CPU thread of a 2-vCPU Xeon (other work sharing
the machine), VAE 43 min (about 0.9 s per step), UNet and text encoder 2 h 21 min (0.36–0.43 s
per step), export and preview under a minute. `preview.png` is the export's check, rendered by
diffusers itself (25 DDIM steps, guidance 7.5, seeds 0–7) for the prompts in
`PREVIEW_PROMPTS`.

Samplers: euler_a (the graphs' default), euler, ddim, ddpm and dpmpp_2m draw what the prompt
says. lms and unipc at guidance 7.5 do not (dark or orange circles for "a red circle on a blue
background"), in diffusers exactly as in LatentFlow: their high-order steps overshoot on this
small model's strongly guided predictions. Lower guidance (`cfg=3`) helps them.
"""


def main():
    global WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["vae", "unet", "export", "all"])
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--unet-steps", type=int, default=20000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=5e-4)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--work", default=str(WORK), help="checkpoints and intermediate files")
    args = ap.parse_args()
    WORK = pathlib.Path(args.work)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"device {device}, {args.threads} thread(s)")
    if args.phase in ("vae", "all"):
        train_vae(args, device)
    if args.phase in ("unet", "all"):
        train_unet(args, device)
    if args.phase in ("export", "all"):
        export(args, device)


if __name__ == "__main__":
    main()
