"""Tiny Stable Diffusion pipeline and its parity fixtures from diffusers.

Builds, with seeded random weights and explicit small configs, a complete diffusers pipeline
folder at tests/fixtures/tiny-sd/ (the VAE made by make_vae_fixtures.py is reused), the same
weights as a single-file LDM checkpoint (tests/fixtures/tiny-sd-single.safetensors), and records
reference outputs under tests/fixtures/sd-ref/:

* tokenizer.json: ids of a corpus of prompts with the real CLIP BPE vocabulary;
* clip.safetensors: text-encoder hidden states (last, penultimate, pooled) for fixed ids;
* unet.safetensors: one UNet forward on a non-square latent;
* loop_<sampler>.safetensors: a 10-step txt2img loop with CFG 7.5 for every sampler, the latent
  after every step and the decoded image; stochastic samplers replay recorded noise;
* img2img.safetensors (strength 0.6) and inpaint.safetensors.

Encoding images uses the posterior mean (LatentFlow's deterministic encode): diffusers'
`retrieve_latents` is patched to take the mode.

Run: tools/reference/setup.sh && tools/reference/.venv/bin/python tools/reference/make_vae_fixtures.py
     && tools/reference/.venv/bin/python tools/reference/make_sd_fixtures.py
"""

import gzip
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_scheduler_fixtures import NoiseQueue, make  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
TINY = ROOT / "tiny-sd"
REF = ROOT / "sd-ref"
IMAGES = ROOT / "images"
INPAINT = ROOT / "tiny-sd-inpaint"
CACHE = pathlib.Path(__file__).resolve().parent / ".cache"

OPEN_CLIP = "open-clip-torch==3.3.0"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

H, W = 12, 16  # latent size: non-square on purpose
PROMPT = "a photo of a cat, best quality"
NEGATIVE = "blurry, lowres"


def bpe_vocab_gz():
    """The original CLIP BPE merges file, from the open-clip-torch wheel on PyPI."""
    path = CACHE / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.check_call(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", OPEN_CLIP, "-d", tmp]
            )
            wheel = next(pathlib.Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                path.write_bytes(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == VOCAB_SHA256, f"unexpected vocabulary file {digest}"
    return path


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(dest):
    """vocab.json + merges.txt built from the original merges file, as CLIP does."""
    lines = gzip.open(bpe_vocab_gz()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    (dest / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    return CLIPTokenizer(vocab=str(dest / "vocab.json"), merges=str(dest / "merges.txt"), model_max_length=77)


CORPUS = [
    "a photo of a cat",
    "A PHOTO OF AN ASTRONAUT RIDING A HORSE ON MARS",
    "masterpiece, best quality, 1girl, solo, looking at viewer",
    "portrait of a woman, 85mm, f/1.4, bokeh, golden hour",
    "a cyberpunk city at night, neon lights, rain, 8k uhd, highly detailed",
    "it's a dog's life; they're happy, we've won, I'm here, you'll see, he'd go",
    "don't stop believin'",
    "café crème brûlée on a wooden table",
    "naïve façade, jalapeño, smörgåsbord, Zürich",
    "東京の夜景",
    "一只可爱的猫",
    "서울의 봄",
    "Привет, мир! красивый пейзаж",
    "مرحبا بالعالم",
    "🐱 cat emoji 🎨🔥✨",
    "1920x1080, 4K, 8K UHD, 3.14159, 2024-05-17, 100%",
    "version 1.5 vs 2.1 vs XL",
    "price: $1,299.99 (limited!)",
    "email@example.com and https://example.com/path?q=1&x=2",
    "!!!???...,,,;;;:::",
    "((masterpiece)), [[blurry]], {curly}, <angle>",
    "(best quality:1.2), (worst quality:0.5)",
    r"a \(escaped\) parenthesis",
    "   leading and trailing spaces   ",
    "multiple   spaces\tand\ttabs\nand\nnewlines",
    "hyphenated-word and snake_case_word and CamelCaseWord",
    "under_score__double",
    "o'clock rock'n'roll",
    "ALL CAPS WITH Mixed case",
    "x",
    "",
    "a",
    "1",
    "the the the the the",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "tab\there",
    "Ωmega αlpha βeta",
    "ﬁne ligature and full-width ＡＢＣ１２３",
    "e\u0301 combining accent vs é",
    "€100 £50 ¥1000 ₹20",
    "5 + 3 = 8, 2^10 = 1024, 7/8 * 9",
    "#hashtag @mention ~tilde `backtick`",
    "line one.\nline two!",
    "watercolor painting of a lighthouse by the sea, trending on artstation",
    "a red cube on top of a blue sphere, studio lighting, octane render",
    "an oil painting of a bowl of fruit in the style of cézanne",
    "low poly fox, isometric, pastel colors",
    "macro photograph of a dewdrop on a leaf",
    "a very long prompt " + ", ".join(f"detail number {i}" for i in range(40)),
    "an extremely detailed and intricate fantasy landscape with towering mountains, "
    "cascading waterfalls, ancient ruins covered in moss, a dragon flying over a castle, "
    "dramatic clouds, volumetric light rays, cinematic composition, ultra realistic, "
    "award winning photograph, 8k resolution, hdr, sharp focus, depth of field, "
    "by greg rutkowski and alphonse mucha and artgerm, concept art, matte painting",
    "Ünïcödé ÜBER straße STRASSE",
    "tokens:with:colons and;semicolons",
    "quotes \"double\" and 'single'",
    "0123456789",
    "a1b2c3 d4e5",
    "I'M SHOUTING, IT'S LOUD",
    "the quick brown fox jumps over the lazy dog",
    "ＫＡＴＡＫＡＮＡ カタカナ half ｶﾀｶﾅ",
]


def tokenizer_fixture(tok):
    rows = [{"prompt": p, "ids": tok(p)["input_ids"]} for p in CORPUS]
    (REF / "tokenizer.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0), encoding="utf-8")
    print("tokenizer corpus", len(rows), "longest", max(len(r["ids"]) for r in rows))


def perturb(model, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def make_text_encoder():
    # 5 layers of width 32 (an MLP of 37, not a multiple of anything), 4 heads, SD's 77 positions
    # and its legacy special-token ids.
    sizes = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4)
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    cfg = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
        layer_norm_eps=1e-5, **sizes, **ids,
    )
    enc = CLIPTextModel(cfg).eval()
    perturb(enc)
    # Stored in float16 (small, and it exercises f16 loading); computed in float32.
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(p.half().float())
    return enc


def make_unet(in_channels=4):
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    ).eval()
    perturb(unet)
    # Values representable in bfloat16: the single-file checkpoint stores them as bf16.
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.bfloat16().float())
    return unet


def unet_variant_fixture():
    """SD 2.x-style options: linear projections, per-block head counts, two transformer layers,
    per-block layer counts and an odd latent size (the upsampler follows the skip's size)."""
    torch.manual_seed(21)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=(1, 2, 1),
        cross_attention_dim=24,
        attention_head_dim=(2, 4, 4),  # diffusers: head counts, despite the name
        transformer_layers_per_block=(2, 1, 1),
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=8,
        flip_sin_to_cos=False,
        freq_shift=1,
    ).eval()
    perturb(unet)
    unet.save_pretrained(ROOT / "tiny-unet-variant", safe_serialization=True)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 9, 11, generator=g)
    ctx = torch.randn(1, 5, 24, generator=g)
    with torch.no_grad():
        out = unet(x, torch.tensor(77.0), encoder_hidden_states=ctx).sample
    save_file({"x": x, "context": ctx, "out": out.contiguous()}, str(REF / "unet_variant.safetensors"), metadata={"t": "77"})
    vpd_attention_fixture(unet, x, ctx)


class CaptureCrossAttention:
    """An attention processor that also keeps each cross-attention's probabilities, averaged
    over heads (B × queries × tokens)."""

    def __init__(self, store, keep):
        self.store, self.keep = store, keep

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        if cross and self.keep:
            self.store.append(probs.reshape(b, attn.heads, probs.shape[1], probs.shape[2]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def vpd_attention_fixture(unet, x, ctx):
    """VPD features with cross-attention maps on the 3-level variant UNet: per coarser level,
    the down/up blocks' cross-attention maps of that size averaged over layers and heads,
    concatenated to the level's feature."""
    store = []
    processors = {name: CaptureCrossAttention(store, not name.startswith("mid_block")) for name in unet.attn_processors}
    unet.set_attn_processor(processors)
    feats, hooks = {}, []
    n = len(unet.up_blocks)
    for u, block in enumerate(unet.up_blocks):
        if u + 1 < n:
            layer = block.attentions[1] if getattr(block, "attentions", None) else block.resnets[1]
            key = n - 1 - u
            hooks.append(layer.register_forward_hook(lambda m, i, o, key=key: feats.__setitem__(key, o[0] if isinstance(o, tuple) else o)))
        else:
            hooks.append(block.register_forward_hook(lambda m, i, o: feats.__setitem__(0, o)))
    with torch.no_grad():
        unet(x, torch.tensor(1.0), encoder_hidden_states=ctx)
    for h in hooks:
        h.remove()
    out = {}
    for k in range(n):
        f = feats[k]
        hw = f.shape[2] * f.shape[3]
        same = [m for m in store if m.shape[1] == hw]
        if k > 0 and same:
            mean = torch.stack(same).mean(0)  # B × hw × tokens
            f = torch.cat([f, mean.transpose(1, 2).reshape(f.shape[0], -1, f.shape[2], f.shape[3])], 1)
        out[f"feature_{k}"] = f.contiguous()
    save_file(out, str(REF / "vpd_variant.safetensors"), metadata={"t": "1"})
    print("vpd features", [tuple(v.shape) for v in out.values()])


def seghead_fixture(unet):
    """VPD-style features of the tiny UNet taken with forward hooks (finest first: the last up
    block's output; coarser up blocks after their second layer), and a random
    `latentflow-seghead-v1` head applied with torch."""
    feats = {}
    hooks = []
    n = len(unet.up_blocks)
    for u, block in enumerate(unet.up_blocks):
        if u + 1 < n:
            layer = block.attentions[1] if getattr(block, "attentions", None) else block.resnets[1]
            key = n - 1 - u
            hooks.append(layer.register_forward_hook(lambda m, i, o, key=key: feats.__setitem__(key, o[0] if isinstance(o, tuple) else getattr(o, "sample", o))))
        else:
            hooks.append(block.register_forward_hook(lambda m, i, o: feats.__setitem__(0, o)))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 4, H, W, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        unet(x, torch.tensor(1.0), encoder_hidden_states=ctx)
    for h in hooks:
        h.remove()
    levels = [feats[k] for k in range(n)]
    torch.manual_seed(9)
    d, classes = 16, 3
    head = {}
    for k, f in enumerate(levels):
        head[f"lateral.{k}.weight"] = torch.randn(d, f.shape[1], 1, 1) * 0.1
        head[f"lateral.{k}.bias"] = torch.randn(d) * 0.1
    head["classifier.weight"] = torch.randn(classes, d, 1, 1) * 0.3
    head["classifier.bias"] = torch.randn(classes) * 0.1
    (ROOT / "seghead").mkdir(exist_ok=True)
    save_file(head, str(ROOT / "seghead" / "head.safetensors"),
              metadata={"format": "latentflow-seghead-v1", "classes": "sky,cat,sofa"})
    import torch.nn.functional as F

    size = levels[0].shape[2:]
    total = sum(
        F.interpolate(F.conv2d(f, head[f"lateral.{k}.weight"], head[f"lateral.{k}.bias"]), size=size, mode="nearest")
        for k, f in enumerate(levels)
    )
    logits = F.conv2d(total.relu(), head["classifier.weight"], head["classifier.bias"])
    out = {"x": x, "context": ctx, "logits": logits.contiguous()}
    out.update({f"feature_{k}": f.contiguous() for k, f in enumerate(levels)})
    save_file(out, str(REF / "seghead.safetensors"), metadata={"t": "1"})


def clip_fixture(tok, enc):
    ids = tok(PROMPT, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = enc(ids, output_hidden_states=True)
    save_file(
        {
            "ids": ids.to(torch.int64).contiguous(),
            "last": out.last_hidden_state.contiguous(),
            "penultimate": out.hidden_states[-2].contiguous(),
            "pooled": out.pooler_output.contiguous(),
        },
        str(REF / "clip.safetensors"),
    )


def unet_fixture(unet):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, H, W, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        out = unet(x, torch.tensor(421.0), encoder_hidden_states=ctx).sample
    save_file({"x": x, "context": ctx, "out": out.contiguous()}, str(REF / "unet.safetensors"), metadata={"t": "421"})


# ---- single-file (LDM) checkpoint ------------------------------------------------------------

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(sd, cfg, dtype=torch.bfloat16):
    n = cfg["layers_per_block"]
    out = {}

    def resnet(prefix, rest):
        head, _, tail = rest.partition(".")
        return f"{prefix}.{RESNET[head]}.{tail}"

    for k, v in sd.items():
        p = k.split(".")
        if k.startswith("time_embedding."):
            new = k.replace("time_embedding.linear_1", "time_embed.0").replace("time_embedding.linear_2", "time_embed.2")
        elif k.startswith("conv_in."):
            new = "input_blocks.0.0." + p[-1]
        elif k.startswith("conv_norm_out."):
            new = "out.0." + p[-1]
        elif k.startswith("conv_out."):
            new = "out.2." + p[-1]
        elif k.startswith(("down_blocks.", "up_blocks.")):
            i, kind, j = int(p[1]), p[2], int(p[3])
            rest = ".".join(p[4:])
            down = p[0] == "down_blocks"
            # LDM numbers each level's resnets (with their attentions), then its resampler.
            slot = int(down) + i * (n + 1) + (n if kind.endswith("samplers") else j)
            prefix = f"{'input' if down else 'output'}_blocks.{slot}"
            if kind == "resnets":
                new = resnet(f"{prefix}.0", rest)
            elif kind == "attentions":
                new = f"{prefix}.1.{rest}"
            elif down:  # downsamplers.0.conv
                new = f"{prefix}.0.op.{p[-1]}"
            else:  # upsamplers.0.conv
                has_attn = "CrossAttn" in cfg["up_block_types"][i]
                new = f"{prefix}.{2 if has_attn else 1}.conv.{p[-1]}"
        elif k.startswith("mid_block."):
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            if kind == "resnets":
                new = resnet(f"middle_block.{2 * j}", rest)
            else:
                new = f"middle_block.1.{rest}"
        else:
            raise KeyError(k)
        out["model.diffusion_model." + new] = v.to(dtype)
    return out


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd, levels):
    out = {}
    for k, v in sd.items():
        new = k
        p = k.split(".")
        if ".down_blocks." in k:
            new = f"encoder.down.{p[2]}." + (
                f"block.{p[4]}." + ".".join(p[5:]) if p[3] == "resnets" else "downsample.conv." + p[-1]
            )
        elif ".up_blocks." in k:
            i = levels - 1 - int(p[2])
            new = f"decoder.up.{i}." + (
                f"block.{p[4]}." + ".".join(p[5:]) if p[3] == "resnets" else "upsample.conv." + p[-1]
            )
        elif ".mid_block.resnets." in k:
            new = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
        elif ".mid_block.attentions." in k:
            rest = ".".join(p[4:-1])
            new = f"{p[0]}.mid.attn_1.{VAE_ATTN[rest]}.{p[-1]}"
            if v.dim() == 2:
                v = v[:, :, None, None]
        elif ".conv_norm_out." in k:
            new = k.replace("conv_norm_out", "norm_out")
        new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = v
    return out


def controlnet_to_ldm(cn):
    """A ControlNet state dict in the original single-file layout (`control_model.*`)."""
    sd = cn.state_dict()
    hint = len(cn.config.conditioning_embedding_out_channels)
    trunk = {k: v for k, v in sd.items() if not k.startswith("controlnet_")}
    cfg = dict(cn.config)
    cfg["up_block_types"] = []
    out = {k.replace("model.diffusion_model.", "control_model."): v for k, v in unet_to_ldm(trunk, cfg, dtype=torch.float32).items()}
    for k, v in sd.items():
        p = k.split(".")
        if k.startswith("controlnet_down_blocks."):
            out[f"control_model.zero_convs.{p[1]}.0.{p[2]}"] = v
        elif k.startswith("controlnet_mid_block."):
            out[f"control_model.middle_block_out.0.{p[1]}"] = v
        elif k.startswith("controlnet_cond_embedding."):
            if p[1] == "conv_in":
                idx = 0
            elif p[1] == "conv_out":
                idx = 2 * (2 * hint - 1)
            else:
                idx = 2 * (int(p[2]) + 1)
            out[f"control_model.input_hint_block.{idx}.{p[-1]}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def write_controlnet_single_file(cn, unet):
    """The tiny ControlNet as a single file. diffusers' single-file loader only knows the
    standard four-stage hint encoder, so the key mapping is checked on a throwaway ControlNet
    with that encoder: diffusers' `from_single_file` must reload it exactly."""
    from diffusers import ControlNetModel

    save_file(controlnet_to_ldm(cn), str(ROOT / "tiny-controlnet-single.safetensors"))
    probe = ControlNetModel.from_unet(unet).eval()
    perturb(probe)
    with tempfile.TemporaryDirectory() as tmp:
        probe.save_pretrained(tmp, safe_serialization=True)
        save_file(controlnet_to_ldm(probe), f"{tmp}/single.safetensors")
        back = ControlNetModel.from_single_file(f"{tmp}/single.safetensors", config=tmp, torch_dtype=torch.float32)
        ref = probe.state_dict()
        diffs = {k: (back.state_dict()[k] - ref[k]).abs().max().item() for k in ref}
        worst = max(diffs.values())
    print("single-file ControlNet layout reloaded by diffusers, max weight difference", worst)


def write_single_file(unet, enc, vae):
    sd = unet_to_ldm(unet.state_dict(), dict(unet.config))
    sd.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    for k, v in enc.state_dict().items():
        k = k if k.startswith("text_model.") else "text_model." + k
        sd["cond_stage_model.transformer." + k] = v.half()
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file(sd, str(ROOT / "tiny-sd-single.safetensors"))
    # Check the layout with diffusers' own single-file loader.
    try:
        back = UNet2DConditionModel.from_single_file(
            str(ROOT / "tiny-sd-single.safetensors"), config=str(TINY), subfolder="unet", torch_dtype=torch.float32
        )
        ref = unet.state_dict()
        worst = max((back.state_dict()[k] - ref[k]).abs().max().item() for k in ref)
        print("single-file UNet reloaded by diffusers, max weight difference", worst)
        vback = AutoencoderKL.from_single_file(
            str(ROOT / "tiny-sd-single.safetensors"), config=str(TINY), subfolder="vae", torch_dtype=torch.float32
        )
        vref = vae.state_dict()
        worst = max((vback.state_dict()[k] - vref[k]).abs().max().item() for k in vref)
        print("single-file VAE reloaded by diffusers, max weight difference", worst)
    except Exception as e:  # diffusers' loader is only a cross-check
        print("note: diffusers could not reload the single-file checkpoint:", e)


# ---- pipeline loops --------------------------------------------------------------------------

SAMPLERS = {
    "ddim": ("ddim", {}),
    "ddpm": ("ddpm", {}),
    "euler": ("euler", {}),
    "euler_a": ("euler_a", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_2m_karras": ("dpmpp_2m", {"use_karras_sigmas": True}),
    "lms": ("lms", {}),
    "unipc": ("unipc", {}),
    "lcm": ("lcm", {}),
}


def patch_noise(queue):
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as p1
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as p2
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as p3
    from make_scheduler_fixtures import patch_randn

    import diffusers.pipelines.controlnet.pipeline_controlnet as p4

    patch_randn(queue)
    for m in (p1, p2, p3, p4):
        m.randn_tensor = queue

    def mode(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    p2.retrieve_latents = mode
    p3.retrieve_latents = mode


class Recorder:
    def __init__(self):
        self.latents = []

    def __call__(self, pipe, i, t, kwargs):
        self.latents.append(kwargs["latents"].clone())
        return kwargs


def run_pipe(pipe, name, extra, **kw):
    queue = NoiseQueue(seed=99)
    patch_noise(queue)
    rec = Recorder()
    with torch.no_grad():
        image = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=10,
            guidance_scale=7.5,
            output_type="np",
            callback_on_step_end=rec,
            **kw,
        ).images
    tensors = dict(extra)
    tensors["latents"] = torch.stack(rec.latents).contiguous()
    tensors["image"] = torch.from_numpy(np.ascontiguousarray(image)).float()
    tensors["noise"] = torch.stack(queue.used).contiguous()
    save_file(tensors, str(REF / f"{name}.safetensors"), metadata={"diffusers": diffusers.__version__})
    print(name, "steps", len(rec.latents), "noise draws", len(queue.used))


def main():
    REF.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = write_tokenizer(TINY / "tokenizer")
    tokenizer_fixture(tok)
    enc = make_text_encoder()
    enc.save_pretrained(TINY / "text_encoder", safe_serialization=True)
    st = TINY / "text_encoder" / "model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(st)).items()}, str(st), metadata={"format": "pt"})
    clip_fixture(tok, enc)

    unet = make_unet()
    unet.save_pretrained(TINY / "unet", safe_serialization=True)
    unet_fixture(unet)
    unet_variant_fixture()
    seghead_fixture(unet)

    vae = AutoencoderKL.from_pretrained(TINY / "vae").eval()
    sched = make("ddim")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(TINY, safe_serialization=True)
    # save_pretrained rewrote the components; keep the f16 text encoder.
    save_file({k: v.half().contiguous() for k, v in load_file(str(st)).items()}, str(st), metadata={"format": "pt"})
    # LatentFlow builds the tokenizer from vocab.json + merges.txt; tokenizer.json is 3.5 MB more.
    (TINY / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for extra in ("feature_extractor", "safety_checker"):
        assert not (TINY / extra).exists()
    write_single_file(unet, enc, vae)

    hh, ww = H * 2, W * 2  # the tiny VAE scales by 2
    for name, (kind, cfg) in SAMPLERS.items():
        pipe.scheduler = make(kind, **cfg)
        run_pipe(pipe, f"loop_{name}", {}, height=hh, width=ww)

    g = torch.Generator().manual_seed(5)
    # 8-bit values, so the PNG that the graphs load holds exactly this image.
    image = torch.round(torch.rand(1, 3, hh, ww, generator=g) * 255) / 255
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, "RGB").save(IMAGES / "img2img-init.png")
    with torch.no_grad():
        init = vae.encode(image * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.scheduler = make("euler")
    run_pipe(i2i, "img2img", {"init_image": image.permute(0, 2, 3, 1).contiguous(), "init_latent": init}, image=image, strength=0.6)

    mask = torch.zeros(1, 1, hh, ww)
    mask[:, :, 4:18, 10:26] = 1.0
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8), "L").convert("RGB").save(IMAGES / "inpaint-mask.png")
    inp = StableDiffusionInpaintPipeline(**pipe.components)
    inp.scheduler = make("ddim")
    run_pipe(
        inp, "inpaint",
        {"init_image": image.permute(0, 2, 3, 1).contiguous(), "mask": mask[:, 0].contiguous()},
        image=image, mask_image=mask, height=hh, width=ww, strength=1.0,
    )

    # DeepCache (the DeepCache package's plug-in helper) on the txt2img loop.
    from DeepCache import DeepCacheSDHelper

    for branch in (0, 1):
        pipe.scheduler = make("ddim")
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=3, cache_branch_id=branch)
        helper.enable()
        run_pipe(pipe, f"deepcache_b{branch}", {}, height=hh, width=ww)
        helper.disable()

    # ControlNet: residuals of one forward, and the pipeline loop (with guidance window and
    # guess mode).
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    torch.manual_seed(31)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).eval()
    perturb(cn)
    cn.save_pretrained(ROOT / "tiny-controlnet", safe_serialization=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, H, W, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    cond = image.repeat(2, 1, 1, 1)
    out = {"x": x, "context": ctx, "cond": cond}
    with torch.no_grad():
        down, mid = cn(x, torch.tensor(421.0), encoder_hidden_states=ctx, controlnet_cond=cond,
                       conditioning_scale=0.8, return_dict=False)
        out["unet_out"] = unet(x, torch.tensor(421.0), encoder_hidden_states=ctx,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        for i, d in enumerate(down):
            out[f"down_{i}"] = d.contiguous()
        out["mid"] = mid.contiguous()
        gdown, gmid = cn(x, torch.tensor(421.0), encoder_hidden_states=ctx, controlnet_cond=cond,
                         conditioning_scale=0.8, guess_mode=True, return_dict=False)
        for i, d in enumerate(gdown):
            out[f"guess_down_{i}"] = d.contiguous()
        out["guess_mid"] = gmid.contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, str(REF / "controlnet.safetensors"),
              metadata={"t": "421", "scale": "0.8", "residuals": str(len(down))})
    rng_state = torch.get_rng_state()
    write_controlnet_single_file(cn, unet)
    torch.set_rng_state(rng_state)
    cpipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=make("ddim"), controlnet=cn,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for name, guess in (("controlnet_loop", False), ("controlnet_guess", True)):
        cpipe.scheduler = make("ddim")
        run_pipe(cpipe, name, {}, image=image, height=hh, width=ww, controlnet_conditioning_scale=0.8,
                 control_guidance_start=0.1, control_guidance_end=0.8, guess_mode=guess)

    # A 9-channel inpainting UNet (latent, mask, masked-image latent), stored in float16.
    torch.manual_seed(11)
    unet9 = make_unet(in_channels=9)
    with torch.no_grad():
        for p in unet9.parameters():
            p.copy_(p.half().float())
    unet9.save_pretrained(INPAINT / "unet", safe_serialization=True)
    st9 = INPAINT / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(st9)).items()}, str(st9), metadata={"format": "pt"})
    components = dict(pipe.components)
    components["unet"] = unet9
    inp9 = StableDiffusionInpaintPipeline(**components)
    inp9.scheduler = make("euler")
    run_pipe(
        inp9, "inpaint9",
        {"init_image": image.permute(0, 2, 3, 1).contiguous(), "mask": mask[:, 0].contiguous()},
        image=image, mask_image=mask, height=hh, width=ww, strength=1.0,
    )

    # Last: fusing and unfusing a LoRA leaves rounding differences in the weights.
    lora_fixture(pipe)


LORA_UNET = [  # (module, alpha or None = no .alpha key)
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 2.0),
    ("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", 2.0),  # see below
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", 8.0),
    ("down_blocks.0.resnets.0.conv1", 3.0),
    ("up_blocks.1.attentions.2.proj_in", 4.0),
]
LORA_TE = [("text_model.encoder.layers.0.self_attn.q_proj", 1.0), ("text_model.encoder.layers.3.mlp.fc1", 6.0)]
# Every module carries its α: for a module without one, kohya (and ComfyUI, A1111) use α = r,
# but diffusers gives it the most common α of the other modules, so the two would not agree.
# diffusers 0.42.1 also gave this attn2.to_k the first module's α (2) when the file said 5, so
# it carries that α here.


def lora_fixture(pipe):
    """A kohya-format LoRA (UNet linear, conv 3×3 and conv 1×1 layers, text encoder; α ≠ r), the same LoRA in PEFT key format (α folded into B), and diffusers' outputs after
    `load_lora_weights` + `fuse_lora(lora_scale=0.7)`."""
    torch.manual_seed(41)
    rank = 4
    kohya, peft_sd = {}, {}
    modules = [("unet", pipe.unet, m, a) for m, a in LORA_UNET] + [("te", pipe.text_encoder, m, a) for m, a in LORA_TE]
    for part, model, name, alpha in modules:
        # transformers 5 keeps CLIP's layers at the top level; LoRA files still say text_model.
        mod = model.get_submodule(name.removeprefix("text_model.") if part == "te" else name)
        w = mod.weight
        if w.dim() == 4:
            down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3]) * 0.1
            up = torch.randn(w.shape[0], rank, 1, 1) * 0.1
        else:
            down = torch.randn(rank, w.shape[1]) * 0.1
            up = torch.randn(w.shape[0], rank) * 0.1
        stem = ("lora_unet_" if part == "unet" else "lora_te_") + name.replace(".", "_")
        kohya[stem + ".lora_down.weight"] = down
        kohya[stem + ".lora_up.weight"] = up
        if alpha is not None:
            kohya[stem + ".alpha"] = torch.tensor(alpha)
        scale = (alpha if alpha is not None else rank) / rank
        prefix = "unet." if part == "unet" else "text_encoder."
        peft_sd[prefix + name + ".lora_A.weight"] = down
        peft_sd[prefix + name + ".lora_B.weight"] = up * scale
    out = ROOT / "lora"
    out.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out / "kohya.safetensors"))
    save_file({k: v.contiguous() for k, v in peft_sd.items()}, str(out / "peft.safetensors"))

    # The text encoder's reference is the merge rule applied with torch: with transformers 5,
    # diffusers 0.42.1 attaches no LoRA to q_proj and gives fc1 the wrong α (checked by hand).
    import copy

    te = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        for name, alpha in LORA_TE:
            stem = "lora_te_" + name.replace(".", "_")
            down, up = kohya[stem + ".lora_down.weight"], kohya[stem + ".lora_up.weight"]
            w = te.get_submodule(name.removeprefix("text_model.")).weight
            w.add_(0.7 * alpha / down.shape[0] * (up @ down))
    pipe.load_lora_weights({k: v.clone() for k, v in kohya.items() if k.startswith("lora_unet_")})
    pipe.fuse_lora(lora_scale=0.7)
    r = load_file(str(REF / "unet.safetensors"))
    c = load_file(str(REF / "clip.safetensors"))
    with torch.no_grad():
        unet_out = pipe.unet(r["x"], torch.tensor(421.0), encoder_hidden_states=r["context"]).sample
        te_out = te(c["ids"])[0]
    save_file({"unet_out": unet_out.contiguous(), "te_last": te_out.contiguous()}, str(REF / "lora.safetensors"),
              metadata={"multiplier": "0.7"})
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    print("lora: unet and text encoder outputs recorded")


if __name__ == "__main__":
    main()
