"""SD3 parity fixtures from diffusers (`SD3Transformer2DModel`, `FlowMatchEulerDiscreteScheduler`),
for ml/models/tests/sd3_parity.rs.

tests/fixtures/tiny-sd3/: an SD3 pipeline folder, random weights: the transformer at diffusers'
own test sizes (4 heads of 8, caption width 32) with 2 blocks (so the last, text-pre-only block
is covered), joint width 64, pooled width 64, patch 2, positions on a 16×16 grid
(`pos_embed_max_size`); two 5-layer CLIP text encoders with projection (width 32, the real CLIP
vocabulary, weights stored in f16; the second tokenizer pads with `!` as SD3's does), a 2-layer
T5 of width 64 with tests/fixtures/tiny-t5's tokenizer, a 2-level VAE with SD3's shift and scale
and no quant convs, and FlowMatchEulerDiscreteScheduler with shift 3.
tests/fixtures/tiny-sd35/transformer/: the transformer with SD3.5's RMS-normed queries and keys
and MMDiT-X's second attention in block 0 (`dual_attention_layers`).

tests/fixtures/sd3-ref/:
- forward.safetensors: each transformer at t = 421.5 on 2×4×8×8 and non-square 2×4×8×12
  latents, text 2×7×64, pooled 2×64 → `out`, `out_wide`, `out35`, `out35_wide`;
- loop.safetensors: SD3Pipeline's denoising loop on the tiny SD3 (10 flow-matching Euler steps,
  shift 3, guidance 5 on `[negative; positive]` features), non-square 8×12 latent: every step's
  latents, the noise and the features;
- pipeline.safetensors: StableDiffusion3Pipeline end to end (prompt, empty negative, T5 to 256
  tokens, guidance 5, 10 steps, 32×48 pixels): the prompt's and the negative's features and
  pooled embeddings, every step's latents, the noise, the decoded image;
- pipeline_dpmpp_2m.safetensors, pipeline_unipc.safetensors: the same pipeline with DPM-Solver++
  and UniPC on their flow grids (use_flow_sigmas, flow_shift 3): every step's latents, the noise,
  the decoded image.

tests/fixtures/tiny-sd3-sai.safetensors, tiny-sd35-sai.safetensors: the two transformers in
Stability AI's original single-file layout (keys under model.diffusion_model., fused q/k/v,
MMDiT names, the last context modulation and the final one as shift then scale), written by
this script's own inverse mapping and checked by loading each back with diffusers'
`SD3Transformer2DModel.from_single_file`: every tensor must come back equal.

Run: tools/reference/.venv/bin/python tools/reference/make_sd3_fixtures.py
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

import diffusers
import numpy as np
import shutil
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
REF = FIX / "sd3-ref"
PIPE = FIX / "tiny-sd3"
PROMPT = "a small red house by the sea"


def transformer(seed, **kw):
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=16,
        **kw,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.12 if p.ndim > 1 else 0.05))
    return model.eval()


def main():
    REF.mkdir(parents=True, exist_ok=True)
    sd3 = transformer(1)
    sd35 = transformer(2, qk_norm="rms_norm", dual_attention_layers=(0,))
    shutil.rmtree(PIPE, ignore_errors=True)
    sd3.save_pretrained(PIPE / "transformer", safe_serialization=True)
    sd35.save_pretrained(FIX / "tiny-sd35" / "transformer", safe_serialization=True)

    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 8), generator=g)
    wide = torch.randn((2, 4, 8, 12), generator=g)
    text = torch.randn((2, 7, 64), generator=g)
    pooled = torch.randn((2, 64), generator=g)
    t = torch.tensor([421.5, 421.5])
    with torch.no_grad():
        kw = dict(encoder_hidden_states=text, pooled_projections=pooled, timestep=t)
        out = {
            "out": sd3(x, **kw).sample,
            "out_wide": sd3(wide, **kw).sample,
            "out35": sd35(x, **kw).sample,
            "out35_wide": sd35(wide, **kw).sample,
        }
    save_file(
        {"x": x, "x_wide": wide, "text": text, "pooled": pooled, **{k: v.contiguous() for k, v in out.items()}},
        str(REF / "forward.safetensors"),
        metadata={"t": "421.5", "diffusers": diffusers.__version__},
    )

    # SD3Pipeline's loop, on given features.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    noise = torch.randn((1, 4, 8, 12), generator=g)
    text2 = torch.randn((2, 9, 64), generator=g)
    pooled2 = torch.randn((2, 64), generator=g)
    latents = noise.clone()
    steps = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = torch.cat([latents] * 2)
            v = sd3(inp, encoder_hidden_states=text2, pooled_projections=pooled2, timestep=t.expand(2)).sample
            uncond, cond = v.chunk(2)
            v = uncond + 5.0 * (cond - uncond)
            latents = scheduler.step(v, t, latents).prev_sample
            steps.append(latents.clone())
    save_file(
        {
            "latents": torch.stack(steps).contiguous(),
            "noise": noise.contiguous(),
            "text": text2.contiguous(),
            "pooled": pooled2.contiguous(),
            "timesteps": scheduler.timesteps.contiguous(),
        },
        str(REF / "loop.safetensors"),
        metadata={"guidance": "5.0", "scheduler": json.dumps(dict(scheduler.config)), "diffusers": diffusers.__version__},
    )
    print("loop steps", len(steps), "max", float(torch.stack(steps).abs().max()))
    sai(sd3, FIX / "tiny-sd3-sai.safetensors", PIPE / "transformer")
    sai(sd35, FIX / "tiny-sd35-sai.safetensors", FIX / "tiny-sd35" / "transformer")
    pipeline(sd3)


def sai(model, path, config):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}
    n = model.config.num_layers
    P = "model.diffusion_model."

    def lin(ours, theirs):
        for suf in ("weight", "bias"):
            out[f"{P}{theirs}.{suf}"] = sd.pop(f"{ours}.{suf}")

    def fused(parts, theirs):
        for suf in ("weight", "bias"):
            out[f"{P}{theirs}.{suf}"] = torch.cat([sd.pop(f"{p}.{suf}") for p in parts], 0)

    def swapped(ours, theirs):
        for suf in ("weight", "bias"):
            scale, shift = sd.pop(f"{ours}.{suf}").chunk(2, 0)
            out[f"{P}{theirs}.{suf}"] = torch.cat([shift, scale], 0)

    out[f"{P}pos_embed"] = sd.pop("pos_embed.pos_embed")
    lin("pos_embed.proj", "x_embedder.proj")
    lin("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    lin("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    lin("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    lin("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    lin("context_embedder", "context_embedder")
    for i in range(n):
        o, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        fused([f"{o}.attn.to_q", f"{o}.attn.to_k", f"{o}.attn.to_v"], f"{x}.attn.qkv")
        fused([f"{o}.attn.add_q_proj", f"{o}.attn.add_k_proj", f"{o}.attn.add_v_proj"], f"{c}.attn.qkv")
        for ours, theirs in (("norm_q", f"{x}.attn.ln_q"), ("norm_k", f"{x}.attn.ln_k"),
                             ("norm_added_q", f"{c}.attn.ln_q"), ("norm_added_k", f"{c}.attn.ln_k")):
            if f"{o}.attn.{ours}.weight" in sd:
                out[f"{P}{theirs}.weight"] = sd.pop(f"{o}.attn.{ours}.weight")
        lin(f"{o}.attn.to_out.0", f"{x}.attn.proj")
        if f"{o}.attn2.to_q.weight" in sd:
            fused([f"{o}.attn2.to_q", f"{o}.attn2.to_k", f"{o}.attn2.to_v"], f"{x}.attn2.qkv")
            for ours, theirs in (("norm_q", "ln_q"), ("norm_k", "ln_k")):
                if f"{o}.attn2.{ours}.weight" in sd:
                    out[f"{P}{x}.attn2.{theirs}.weight"] = sd.pop(f"{o}.attn2.{ours}.weight")
            lin(f"{o}.attn2.to_out.0", f"{x}.attn2.proj")
        lin(f"{o}.norm1.linear", f"{x}.adaLN_modulation.1")
        lin(f"{o}.ff.net.0.proj", f"{x}.mlp.fc1")
        lin(f"{o}.ff.net.2", f"{x}.mlp.fc2")
        if i == n - 1:
            swapped(f"{o}.norm1_context.linear", f"{c}.adaLN_modulation.1")
        else:
            lin(f"{o}.attn.to_add_out", f"{c}.attn.proj")
            lin(f"{o}.norm1_context.linear", f"{c}.adaLN_modulation.1")
            lin(f"{o}.ff_context.net.0.proj", f"{c}.mlp.fc1")
            lin(f"{o}.ff_context.net.2", f"{c}.mlp.fc2")
    lin("proj_out", "final_layer.linear")
    swapped("norm_out.linear", "final_layer.adaLN_modulation.1")
    assert not sd, f"unmapped: {sorted(sd)}"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    back = SD3Transformer2DModel.from_single_file(str(path), config=str(config))
    ref, got = model.state_dict(), back.state_dict()
    assert set(got) == set(ref), set(got) ^ set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    print(path.name, ": diffusers' from_single_file gives back all", len(ref), "tensors")


def clip(seed, eos):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=eos, pad_token_id=1, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
        hidden_act="gelu", projection_dim=32, max_position_embeddings=77,
    )
    model = CLIPTextModelWithProjection(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            # Stored in f16: the reference runs on the rounded values.
            v = torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.02)
            p.copy_(v.half().float())
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_((1.0 + 0.1 * torch.randn(p.shape, generator=g)).half().float())
    return model


def pipeline(transformer):
    tok = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer")
    tok_2 = CLIPTokenizer.from_pretrained(FIX / "tiny-sd" / "tokenizer", pad_token="!")
    tok_3 = AutoTokenizer.from_pretrained(FIX / "tiny-t5")
    enc = clip(11, 2)
    enc_2 = clip(12, 49407)
    torch.manual_seed(13)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=124, d_model=64, d_kv=16, d_ff=40, num_layers=2, num_heads=4,
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
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=enc, tokenizer=tok, text_encoder_2=enc_2, tokenizer_2=tok_2,
        text_encoder_3=t5, tokenizer_3=tok_3,
    )
    pipe.save_pretrained(PIPE, safe_serialization=True)
    # The CLIP encoders again, in f16 (their values are f16-exact).
    for sub, m in (("text_encoder", enc), ("text_encoder_2", enc_2)):
        m.to(torch.float16).save_pretrained(PIPE / sub, safe_serialization=True)
        m.to(torch.float32)
    shutil.copy(FIX / "tiny-t5" / "tokenizer.json", PIPE / "tokenizer_3" / "tokenizer.json")
    # The CLIP tokenizers as tiny-sd's vocab.json and merges.txt (smaller than tokenizer.json);
    # the second pads with `!`.
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        shutil.rmtree(PIPE / sub)
        shutil.copytree(FIX / "tiny-sd" / "tokenizer", PIPE / sub)
        special = json.loads((PIPE / sub / "special_tokens_map.json").read_text())
        special["pad_token"] = pad
        (PIPE / sub / "special_tokens_map.json").write_text(json.dumps(special))
        cfg = json.loads((PIPE / sub / "tokenizer_config.json").read_text())
        cfg["pad_token"] = pad
        (PIPE / sub / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))

    g = torch.Generator().manual_seed(21)
    noise = torch.randn((1, 4, 16, 24), generator=g)
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(
            prompt=PROMPT, prompt_2=None, prompt_3=None, negative_prompt="", do_classifier_free_guidance=True,
            max_sequence_length=256,
        )
        steps = []

        def record(p, i, t, kw):
            steps.append(kw["latents"].clone())
            return {}

        image = pipe(
            prompt=PROMPT, negative_prompt="", height=32, width=48, num_inference_steps=10,
            guidance_scale=5.0, latents=noise.clone(), max_sequence_length=256, output_type="np",
            callback_on_step_end=record,
        ).images
    save_file(
        {
            "context": pe.contiguous(), "negative_context": ne.contiguous(),
            "pooled": pp.contiguous(), "negative_pooled": npool.contiguous(),
            "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
        },
        str(REF / "pipeline.safetensors"),
        metadata={"prompt": PROMPT, "diffusers": diffusers.__version__},
    )
    print("pipeline steps", len(steps), "context", tuple(pe.shape), "max", float(torch.stack(steps).abs().max()))

    # The same pipeline with DPM-Solver++ and UniPC on their flow grids (use_flow_sigmas,
    # flow_prediction, flow_shift 3), as diffusers allows for flow models.
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    for name, cls in (("dpmpp_2m", DPMSolverMultistepScheduler), ("unipc", UniPCMultistepScheduler)):
        pipe.scheduler = cls(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
        steps = []
        with torch.no_grad():
            image = pipe(
                prompt=PROMPT, negative_prompt="", height=32, width=48, num_inference_steps=10,
                guidance_scale=5.0, latents=noise.clone(), max_sequence_length=256, output_type="np",
                callback_on_step_end=record,
            ).images
        save_file(
            {
                "latents": torch.stack(steps).contiguous(), "noise": noise.contiguous(),
                "image": torch.from_numpy(np.ascontiguousarray(image)).float().contiguous(),
            },
            str(REF / f"pipeline_{name}.safetensors"),
            metadata={"prompt": PROMPT, "scheduler": json.dumps(dict(pipe.scheduler.config)), "diffusers": diffusers.__version__},
        )
        print(name, "steps", len(steps))


if __name__ == "__main__":
    main()
