"""Flux parity fixtures from diffusers (`FluxTransformer2DModel`, `FluxPipeline`), for
ml/models/tests/flux_parity.rs and tests/e2e/flux.rs.

tests/fixtures/tiny-flux/: a FLUX.1-dev-like pipeline folder, random weights: the transformer at
diffusers' own test sizes (2 heads of 16, joint and pooled width 32, RoPE axes 4/4/8) with 2
double- and 2 single-stream blocks and the guidance embedding; a 5-layer CLIP text encoder
(width 32, the real CLIP vocabulary, f16 weights), a 2-layer T5 of width 32 with
tests/fixtures/tiny-t5's tokenizer, a 2-level VAE with Flux's shift and scale and no quant
convs, and FlowMatchEulerDiscreteScheduler with dynamic shifting (Flux's config).
tests/fixtures/tiny-flux-schnell/transformer/: the transformer without the guidance embedding.
tests/fixtures/tiny-flux-bfl.safetensors: the dev transformer in Black Forest Labs' original
single-file layout (fused q/k/v, BFL names, the final modulation as shift then scale), written
by this script's own inverse mapping and checked by loading it back with diffusers'
`FluxTransformer2DModel.from_single_file`: every tensor must come back equal.

tests/fixtures/flux-ref/:
- forward.safetensors: each transformer at t = 421.5 (guidance 3.5 for dev) on unpacked 2×4×8×8
  and non-square 2×4×8×12 latents (packed and unpacked as the pipeline does), text 2×7×32,
  pooled 2×32 → `out`, `out_wide`, `schnell`, `schnell_wide`;
- pipeline.safetensors: FluxPipeline end to end (guidance 3.5, 10 steps, 32×48 pixels, T5 to
  512 tokens, Flux's σ with μ from the 96 tokens): the features, the pooled embedding, every
  step's latents (unpacked), the noise (unpacked), the decoded image.

Run: tools/reference/.venv/bin/python tools/reference/make_flux_fixtures.py
"""

import json
import pathlib
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
REF = FIX / "flux-ref"
PIPE = FIX / "tiny-flux"
PROMPT = "a small red house by the sea"


def transformer(seed, guidance):
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8], guidance_embeds=guidance,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.12 if p.ndim > 1 else 0.05))
    return model.eval()


def pack(x):
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(t, h, w):
    b, _, c4 = t.shape
    return t.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def ids(h, w, lt):
    img = torch.zeros(h // 2, w // 2, 3)
    img[..., 1] = torch.arange(h // 2)[:, None]
    img[..., 2] = torch.arange(w // 2)[None, :]
    return img.reshape(-1, 3), torch.zeros(lt, 3)


def run(model, x, text, pooled, t, guidance):
    _, _, h, w = x.shape
    img_ids, txt_ids = ids(h, w, text.shape[1])
    with torch.no_grad():
        out = model(
            hidden_states=pack(x), encoder_hidden_states=text, pooled_projections=pooled,
            timestep=torch.full((x.shape[0],), t) / 1000, img_ids=img_ids, txt_ids=txt_ids,
            guidance=None if guidance is None else torch.full((x.shape[0],), guidance),
        ).sample
    return unpack(out, h, w).contiguous()


def main():
    REF.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(PIPE, ignore_errors=True)
    dev = transformer(1, True)
    schnell = transformer(2, False)
    schnell.save_pretrained(FIX / "tiny-flux-schnell" / "transformer", safe_serialization=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 8), generator=g)
    wide = torch.randn((2, 4, 8, 12), generator=g)
    text = torch.randn((2, 7, 32), generator=g)
    pooled = torch.randn((2, 32), generator=g)
    save_file(
        {
            "x": x, "x_wide": wide, "text": text, "pooled": pooled,
            "out": run(dev, x, text, pooled, 421.5, 3.5), "out_wide": run(dev, wide, text, pooled, 421.5, 3.5),
            "schnell": run(schnell, x, text, pooled, 421.5, None),
            "schnell_wide": run(schnell, wide, text, pooled, 421.5, None),
        },
        str(REF / "forward.safetensors"),
        metadata={"t": "421.5", "guidance": "3.5", "diffusers": diffusers.__version__},
    )
    dev.save_pretrained(PIPE / "transformer", safe_serialization=True)
    bfl(dev)
    pipeline(dev)


def bfl(model):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}

    def lin(ours, theirs):
        out[f"{theirs}.weight"] = sd.pop(f"{ours}.weight")
        out[f"{theirs}.bias"] = sd.pop(f"{ours}.bias")

    def fused(parts, theirs):
        for suf in ("weight", "bias"):
            out[f"{theirs}.{suf}"] = torch.cat([sd.pop(f"{p}.{suf}") for p in parts], 0)

    tt = "time_text_embed"
    lin(f"{tt}.timestep_embedder.linear_1", "time_in.in_layer")
    lin(f"{tt}.timestep_embedder.linear_2", "time_in.out_layer")
    lin(f"{tt}.text_embedder.linear_1", "vector_in.in_layer")
    lin(f"{tt}.text_embedder.linear_2", "vector_in.out_layer")
    lin(f"{tt}.guidance_embedder.linear_1", "guidance_in.in_layer")
    lin(f"{tt}.guidance_embedder.linear_2", "guidance_in.out_layer")
    lin("context_embedder", "txt_in")
    lin("x_embedder", "img_in")
    for i in range(model.config.num_layers):
        o, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        lin(f"{o}.norm1.linear", f"{b}.img_mod.lin")
        lin(f"{o}.norm1_context.linear", f"{b}.txt_mod.lin")
        fused([f"{o}.attn.to_q", f"{o}.attn.to_k", f"{o}.attn.to_v"], f"{b}.img_attn.qkv")
        fused([f"{o}.attn.add_q_proj", f"{o}.attn.add_k_proj", f"{o}.attn.add_v_proj"], f"{b}.txt_attn.qkv")
        for ours, theirs in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                             ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{b}.{theirs}.scale"] = sd.pop(f"{o}.attn.{ours}.weight")
        lin(f"{o}.attn.to_out.0", f"{b}.img_attn.proj")
        lin(f"{o}.attn.to_add_out", f"{b}.txt_attn.proj")
        lin(f"{o}.ff.net.0.proj", f"{b}.img_mlp.0")
        lin(f"{o}.ff.net.2", f"{b}.img_mlp.2")
        lin(f"{o}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
        lin(f"{o}.ff_context.net.2", f"{b}.txt_mlp.2")
    for i in range(model.config.num_single_layers):
        o, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        lin(f"{o}.norm.linear", f"{b}.modulation.lin")
        fused([f"{o}.attn.to_q", f"{o}.attn.to_k", f"{o}.attn.to_v", f"{o}.proj_mlp"], f"{b}.linear1")
        out[f"{b}.norm.query_norm.scale"] = sd.pop(f"{o}.attn.norm_q.weight")
        out[f"{b}.norm.key_norm.scale"] = sd.pop(f"{o}.attn.norm_k.weight")
        lin(f"{o}.proj_out", f"{b}.linear2")
    lin("proj_out", "final_layer.linear")
    for suf in ("weight", "bias"):
        scale, shift = sd.pop(f"norm_out.linear.{suf}").chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{suf}"] = torch.cat([shift, scale], 0)
    assert not sd, f"unmapped: {sorted(sd)}"
    path = FIX / "tiny-flux-bfl.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    # diffusers' converter hard-codes FLUX.1's token width (inner_dim = 3072): run its own code
    # with the tiny width instead.
    import inspect
    import diffusers.loaders.single_file_utils as sfu
    import diffusers.loaders.single_file_model as sfm

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    ns = dict(vars(sfu))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {model.inner_dim}"), ns)
    patched = ns["convert_flux_transformer_checkpoint_to_diffusers"]
    sfm.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]["checkpoint_mapping_fn"] = patched
    back = FluxTransformer2DModel.from_single_file(str(path), config=str(PIPE / "transformer"))
    ref = model.state_dict()
    got = back.state_dict()
    assert set(got) == set(ref), set(got) ^ set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    print("BFL single file: diffusers' from_single_file gives back all", len(ref), "tensors")


def pipeline(transformer):
    tok = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer")
    tok_2 = AutoTokenizer.from_pretrained(FIX / "tiny-t5")
    torch.manual_seed(11)
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
            hidden_act="quick_gelu", max_position_embeddings=77,
        )
    ).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.02)
            p.copy_(v.half().float())
    torch.manual_seed(13)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=124, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20,
            feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
            layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
        )
    ).eval()
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for name, p in t5.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    torch.manual_seed(14)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
        tokenizer_2=tok_2, transformer=transformer,
    )
    pipe.save_pretrained(PIPE, safe_serialization=True)
    clip.to(torch.float16).save_pretrained(PIPE / "text_encoder", safe_serialization=True)
    clip.to(torch.float32)
    shutil.copy(FIX / "tiny-t5" / "tokenizer.json", PIPE / "tokenizer_2" / "tokenizer.json")
    shutil.rmtree(PIPE / "tokenizer")
    shutil.copytree(FIX / "tiny-sd" / "tokenizer", PIPE / "tokenizer")

    g = torch.Generator().manual_seed(21)
    noise = torch.randn((1, 4, 16, 24), generator=g)
    steps = []

    def record(p, i, t, kw):
        steps.append(unpack(kw["latents"].clone(), 16, 24))
        return {}

    with torch.no_grad():
        pe, pp, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)
        image = pipe(
            prompt=PROMPT, height=32, width=48, num_inference_steps=10, guidance_scale=3.5,
            latents=pack(noise), max_sequence_length=512, output_type="np", callback_on_step_end=record,
        ).images
    save_file(
        {
            "context": pe.contiguous(), "pooled": pp.contiguous(),
            "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
            "timesteps": pipe.scheduler.timesteps.contiguous(),
        },
        str(REF / "pipeline.safetensors"),
        metadata={"prompt": PROMPT, "guidance": "3.5", "diffusers": diffusers.__version__},
    )
    print("pipeline steps", len(steps), "context", tuple(pe.shape), "max", float(torch.stack(steps).abs().max()))


if __name__ == "__main__":
    main()
