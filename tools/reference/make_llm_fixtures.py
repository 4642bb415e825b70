"""Tiny T5, decoder-only LLMs, ELLA and SUR-adapter models and their parity fixtures.

Builds, with seeded random weights and explicit small configs:

* tests/fixtures/tiny-t5/ (transformers folder, f32 weights rounded to bf16 values, a Unigram
  tokenizer.json with a written-out vocabulary), tests/fixtures/tiny-t5-sharded/ (the same weights in bf16,
  two shards and an index) and tests/fixtures/tiny-t5-f16.safetensors (one file, f16);
* tests/fixtures/tiny-llm/{llama,mistral,qwen2,qwen3}/ (transformers folders with a byte-level BPE
  tokenizer.json; Llama with llama3 RoPE scaling and grouped-query attention, Qwen2 with q/k/v
  biases, Qwen3 with q/k norms and a head width that is not hidden/heads);
* tests/fixtures/tiny-ella.safetensors: the authors' `ELLA` module on a tiny config, every
  weight random (the AdaLN linears too, which the authors zero-initialise);
* tests/fixtures/tiny-sur.safetensors: the authors' SUR `Adapter` on a tiny config;

and records under tests/fixtures/llm-ref/:

* t5.safetensors: token ids and masks (padded to 16 and unpadded), the encoder's
  last_hidden_state for a padded batch of three prompts of different lengths and for each
  prompt alone;
* llm_<family>.safetensors: hidden_states[0], [-2] and [-1] for a right-padded batch;
* ella.safetensors: the connector's output at t ∈ {0, 500, 999} for batch-2 features of two
  token lengths, and with its blocks zeroed;
* ella_fixed.safetensors, ella_flexible.safetensors: 10-step txt2img loops of the tiny SD
  pipeline driven through the authors' `ELLAProxyUNet` (fixed length 128, and flexible length as
  in their `generate_image_with_flexible_max_length`), every step's latent, the image, the noise;
* sur.safetensors and sur_loop.safetensors: the adapter on the tiny CLIP's [negative; positive]
  context, and a 10-step loop fed the adapted context, as the authors' pipeline does.

The authors' code is imported at generation time, never committed: checkouts of
TencentQQGYLab/ELLA @3c228f1d (model.py, inference.py) and Qrange-group/SUR-adapter @5d97aa3a
(SUR_adapter.py), by default in tools/reference/.cache/ELLA and .cache/SUR-adapter.

Run (after make_sd_fixtures.py, whose tiny pipeline it uses):
  tools/reference/.venv/bin/python tools/reference/make_llm_fixtures.py
"""

import argparse
import contextlib
import os
import pathlib
import sys
import types

# The tokenizer trainers are deterministic only on one thread.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import StableDiffusionPipeline
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5EncoderModel,
)

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_scheduler_fixtures import NoiseQueue, make  # noqa: E402
from make_sd_fixtures import H, W, NEGATIVE, PROMPT, Recorder, patch_noise  # noqa: E402

ROOT = HERE.parents[1] / "tests" / "fixtures"
REF = ROOT / "llm-ref"
TINY_SD = ROOT / "tiny-sd"

CORPUS = [
    "a photo of a cat, best quality",
    "a red circle on a blue background",
    "an astronaut riding a horse on the moon",
    "a bowl of fruit on a wooden table, soft light",
    "a watercolor painting of a lighthouse at dusk",
    "two dogs playing in the snow",
    "a city street at night with neon signs and rain",
    "a small green frog sitting on a leaf",
    "portrait of an old man with a grey beard",
    "a mountain lake reflecting pine trees",
    "blurry, lowres, bad anatomy",
    "the quick brown fox jumps over the lazy dog",
]
T5_PROMPTS = [
    "a cat",
    "a photo of a cat, best quality",
    "an astronaut riding a horse on the moon with a red flag and a blue sky",
]
META = {
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "torch": torch.__version__,
}


def round_bf16(module):
    """Rounds every parameter to a bf16 value (and flushes tiny ones, which f16 cannot hold
    exactly), so f32, bf16 and f16 files hold the same numbers."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.where(p.abs() < 1e-3, torch.zeros_like(p), p).bfloat16().float())


def t5_tokenizer(dest):
    """A T5-style Unigram tokenizer (NFKC, Metaspace, `</s>` appended, pad 0, eos 1, unk 2)
    with a vocabulary written out rather than trained: the trainer's results vary from run to
    run (hash-map order), and fixtures must not."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    words = sorted({w for line in CORPUS for w in line.replace(",", " ,").split()})
    chars = sorted({c for line in CORPUS for c in line if c != " "})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -4.0 - 0.01 * i) for i, w in enumerate(words) if len(w) > 1]
    vocab += [(c, -6.0 - 0.01 * i) for i, c in enumerate(chars)]
    vocab += [("▁" + c, -5.0 - 0.01 * i) for i, c in enumerate(chars)]
    seen, unique = set(), []
    for piece, score in vocab:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    sp = Tokenizer(models.Unigram(unique, unk_id=2, byte_fallback=False))
    sp.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    sp.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=sp, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1, (tok.pad_token_id, tok.eos_token_id)
    tok.save_pretrained(dest)
    return tok


def make_t5(tok):
    dest = ROOT / "tiny-t5"
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=40,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
        relative_attention_max_distance=20, is_encoder_decoder=False, pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(11)
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    round_bf16(model)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    sharded = ROOT / "tiny-t5-sharded"
    model.to(torch.bfloat16).save_pretrained(sharded, safe_serialization=True, max_shard_size="30KB")
    model.float()
    assert len(list(sharded.glob("model-*.safetensors"))) >= 2, "expected several shards"
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
    save_file(sd, str(ROOT / "tiny-t5-f16.safetensors"), metadata={"format": "pt"})

    out = {}
    fixed = tok(T5_PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    longest = tok(T5_PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        out["fixed_ids"] = fixed.input_ids.int()
        out["fixed_mask"] = fixed.attention_mask.float()
        out["fixed_hidden"] = model(fixed.input_ids, attention_mask=fixed.attention_mask).last_hidden_state
        out["longest_ids"] = longest.input_ids.int()
        out["longest_mask"] = longest.attention_mask.float()
        out["longest_hidden"] = model(longest.input_ids, attention_mask=longest.attention_mask).last_hidden_state
        for i, p in enumerate(T5_PROMPTS):
            ids = tok(p, return_tensors="pt").input_ids
            out[f"alone_{i}_ids"] = ids.int()
            out[f"alone_{i}_hidden"] = model(ids).last_hidden_state
    save_file({k: v.contiguous() for k, v in out.items()}, str(REF / "t5.safetensors"), metadata=META)
    print("t5: vocab", len(tok), "fixed", tuple(fixed.input_ids.shape), "longest", tuple(longest.input_ids.shape))
    return model


def llm_tokenizer():
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<|endoftext|>")
    tok.padding_side = "right"
    return tok


def make_llms(tok):
    base = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=40, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, pad_token_id=0,
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    families = {
        "llama": (LlamaConfig, LlamaForCausalLM, dict(
            rope_parameters=dict(rope_type="llama3", rope_theta=50000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=16),
        )),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16, rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
        "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    }
    prompts = ["a photo of a cat, best quality", "two dogs playing in the snow at night"]
    for i, (name, (Config, Model, extra)) in enumerate(families.items()):
        torch.manual_seed(20 + i)
        cfg = Config(**base, **extra)
        model = Model(cfg).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                else:
                    p.normal_(0, 0.2)
        dest = ROOT / "tiny-llm" / name
        model.save_pretrained(dest, safe_serialization=True)
        tok.save_pretrained(dest)
        batch = tok(prompts, padding="longest", return_tensors="pt")
        assert batch.attention_mask[0].sum() != batch.attention_mask[1].sum(), "want different lengths"
        with torch.no_grad():
            hs = model.model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
        out = {
            "ids": batch.input_ids.int(),
            "mask": batch.attention_mask.float(),
            "hidden_0": hs[0],
            "hidden_m2": hs[-2],
            "hidden_m1": hs[-1],
        }
        save_file({k: v.contiguous() for k, v in out.items()}, str(REF / f"llm_{name}.safetensors"), metadata=META)
        print(name, "hidden states", len(hs), "ids", tuple(batch.input_ids.shape))


def import_authors(ella_dir, sur_dir):
    # inference.py imports its demo's UI and CLI at the top; neither is used here.
    for name in ("gradio", "fire"):
        sys.modules.setdefault(name, types.ModuleType(name))
    tv = types.ModuleType("torchvision")
    tv_utils = types.ModuleType("torchvision.utils")
    tv_utils.save_image = lambda *a, **k: None
    tv.utils = tv_utils
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.utils", tv_utils)
    for d, f in ((ella_dir, "model.py"), (ella_dir, "inference.py"), (sur_dir, "SUR_adapter.py")):
        if not (d / f).is_file():
            sys.exit(f"{d / f} is missing: check out the authors' repository there (see this script's docstring)")
    sys.path.insert(0, str(ella_dir))
    sys.path.insert(0, str(sur_dir))
    import inference
    import model as ella_model
    import SUR_adapter

    return ella_model, inference, SUR_adapter


def make_ella(ella_model):
    torch.manual_seed(31)
    ella = ella_model.ELLA(time_channel=32, time_embed_dim=64, width=32, layers=2, heads=4,
                           num_latents=8, input_dim=32).eval()
    with torch.no_grad():
        for n, p in ella.named_parameters():
            if n.endswith("latents"):
                continue
            p.normal_(0, 0.15)
    save_file({k: v.contiguous() for k, v in ella.state_dict().items()}, str(ROOT / "tiny-ella.safetensors"))
    g = torch.Generator().manual_seed(3)
    out = {}
    with torch.no_grad():
        for length in (5, 11):
            feats = torch.randn(2, length, 32, generator=g)
            out[f"features_{length}"] = feats
            for t in (0, 500, 999):
                out[f"out_{length}_t{t}"] = ella(feats, torch.tensor(t))
        # Zeroed blocks (AdaLN, attention and MLP outputs): the output is the time-aware latents.
        zeroed = ella_model.ELLA(time_channel=32, time_embed_dim=64, width=32, layers=2, heads=4,
                                 num_latents=8, input_dim=32).eval()
        zeroed.load_state_dict(ella.state_dict())
        for n, p in zeroed.named_parameters():
            if ".ln_" in n or "out_proj" in n or "c_proj" in n:
                p.zero_()
        out["zeroed_out_5_t500"] = zeroed(out["features_5"], torch.tensor(500))
    save_file({k: v.contiguous() for k, v in out.items()}, str(REF / "ella.safetensors"), metadata=META)
    print("ella: outputs", sorted(out))
    return ella


def t5_embedder(ella_model, tok_dir):
    """The authors' T5TextEmbedder on the tiny T5."""
    emb = ella_model.T5TextEmbedder(pretrained_path=str(tok_dir))
    return emb.eval()


def tiny_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(TINY_SD, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make("dpmpp_2m")
    return pipe


def record_loop(pipe, name, extra, run):
    queue = NoiseQueue(seed=99)
    patch_noise(queue)
    rec = Recorder()
    with torch.no_grad():
        image = run(callback_on_step_end=rec, num_inference_steps=10, guidance_scale=7.5,
                    height=H * 2, width=W * 2)
    tensors = dict(extra)
    tensors["latents"] = torch.stack(rec.latents)
    image = image if torch.is_tensor(image) else torch.from_numpy(image)
    tensors["image"] = image.float()
    tensors["noise"] = torch.stack(queue.used)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(REF / f"{name}.safetensors"), metadata=META)
    print(name, "steps", len(rec.latents), "noise draws", len(queue.used))


def ella_loops(ella_model, inference, ella):
    t5 = t5_embedder(ella_model, ROOT / "tiny-t5")
    pipe = tiny_pipe()
    inference.load_ella_for_pipe(pipe, ella)
    with torch.no_grad():
        fixed_pos = t5([PROMPT], max_length=128)
        flex_pos = t5([PROMPT], max_length=None)
        flex_neg = t5([NEGATIVE], max_length=None)

    # The authors' functions encode "" as the negative prompt; the other fixtures use NEGATIVE,
    # so their embedder is given NEGATIVE wherever they pass "".
    @contextlib.contextmanager
    def negative_for_empty():
        orig = t5.forward
        t5.forward = lambda caption, *a, **k: orig([NEGATIVE if c == "" else c for c in caption], *a, **k)
        try:
            yield
        finally:
            t5.forward = orig

    def fixed_with_negative(**kw):
        with negative_for_empty():
            return inference.generate_image_with_fixed_max_length(pipe, t5, PROMPT, output_type="np", **kw)

    def flexible(**kw):
        with negative_for_empty():
            return inference.generate_image_with_flexible_max_length(pipe, t5, PROMPT, output_type="np", **kw)

    record_loop(pipe, "ella_fixed", {"t5_positive": fixed_pos}, fixed_with_negative)
    record_loop(pipe, "ella_flexible", {"t5_positive": flex_pos, "t5_negative": flex_neg}, flexible)
    inference.offload_ella_for_pipe(pipe)


def sur(SUR_adapter):
    torch.manual_seed(41)
    adapter = SUR_adapter.Adapter(depth=2, adapter_weight=0.1, sd_text_size=32).eval()
    with torch.no_grad():
        adapter.fc.weight.normal_(0, 0.2)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(ROOT / "tiny-sur.safetensors"))
    pipe = tiny_pipe()
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        both = torch.cat([neg, pos])  # what the authors' pipeline hands the adapter
        out, _, _ = adapter(both)
        single, _, _ = adapter(pos)
    save_file({"context": both.contiguous(), "adapted": out.contiguous(), "positive_alone": single.contiguous()},
              str(REF / "sur.safetensors"), metadata=META)
    neg_a, pos_a = out.chunk(2)

    def run(**kw):
        return pipe(prompt_embeds=pos_a, negative_prompt_embeds=neg_a, output_type="np", **kw).images

    record_loop(pipe, "sur_loop", {}, run)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ella", type=pathlib.Path, default=HERE / ".cache" / "ELLA")
    ap.add_argument("--sur", type=pathlib.Path, default=HERE / ".cache" / "SUR-adapter")
    args = ap.parse_args()
    REF.mkdir(parents=True, exist_ok=True)
    ella_model, inference, SUR_adapter = import_authors(args.ella, args.sur)
    tok = t5_tokenizer(ROOT / "tiny-t5")
    make_t5(tok)
    make_llms(llm_tokenizer())
    ella = make_ella(ella_model)
    ella_loops(ella_model, inference, ella)
    sur(SUR_adapter)


if __name__ == "__main__":
    main()
