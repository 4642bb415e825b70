"""Random-weight models at the published sizes for the LLM-connector benchmark
(tools/bench/llm.sh): flan-t5-xl's encoder (1.2 B parameters, stored in bf16 as two shards
with an index, as the released model is) and ELLA's SD 1.5 connector (ella-sd1.5-tsc-t5xl's
sizes, f32). Not committed: 2.5 GB.

  tools/reference/.venv/bin/python tools/reference/make_llm_random.py [DEST=target/llm-random]
"""

import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

HERE = pathlib.Path(__file__).resolve().parent

# google/flan-t5-xl's config.json (the encoder's fields).
FLAN_T5_XL = dict(
    vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
    is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
)


def main():
    dest = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/llm-random")
    t5_dir = dest / "flan-t5-xl"
    if not (t5_dir / "model.safetensors.index.json").exists():
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        model = T5EncoderModel(T5Config(**FLAN_T5_XL)).eval()
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(t5_dir, safe_serialization=True, max_shard_size="2GB")
        print(t5_dir, sum(p.numel() for p in model.parameters()) / 1e9, "B parameters")
    ella_file = dest / "ella-sd15-random.safetensors"
    if not ella_file.exists():
        sys.path.insert(0, str(HERE / ".cache" / "ELLA"))
        from model import ELLA  # the authors' module (see make_llm_fixtures.py)

        torch.manual_seed(1)
        ella = ELLA()
        with torch.no_grad():
            for n, p in ella.named_parameters():
                if ".ln_" in n:
                    p.normal_(0, 0.02)
        save_file({k: v.contiguous() for k, v in ella.state_dict().items()}, str(ella_file))
        print(ella_file)


if __name__ == "__main__":
    main()
