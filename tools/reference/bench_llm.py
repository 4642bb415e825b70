"""The PyTorch side of the LLM-connector CPU benchmark (see ml/models/benches/llm.rs).

    tools/reference/.venv/bin/python tools/reference/bench_llm.py target/llm-random [threads]
    tools/reference/.venv/bin/python tools/reference/bench_llm.py target/llm-random 2 load
The second form loads the bf16 T5 in bf16 and prints the process's peak RSS.
"""

import pathlib
import resource
import sys
import time

import torch
from transformers import T5EncoderModel

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_sd15 import timed  # noqa: E402


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    dest = pathlib.Path(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    t5_dir = dest / "flan-t5-xl"
    if len(sys.argv) > 3 and sys.argv[3] == "load":
        t0 = time.perf_counter()
        model = T5EncoderModel.from_pretrained(t5_dir, dtype=torch.bfloat16).eval()
        print(f"load flan-t5-xl bf16    {time.perf_counter() - t0:8.2f} s   peak RSS {peak_mib():8.0f} MiB")
        with torch.inference_mode():
            model(torch.arange(128).unsqueeze(0))
        print(f"  and one forward pass            peak RSS {peak_mib():8.0f} MiB")
        return
    print(f"torch {torch.__version__} {threads} threads")
    ids = torch.randint(2, 32000, (1, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            model = T5EncoderModel.from_pretrained(t5_dir, dtype=dtype).eval()
            s = timed(3, lambda: model(ids, attention_mask=mask).last_hidden_state)
            print(f"t5 xl 128 tokens {name:4}   {s:8.3f} s")
            del model
        sys.path.insert(0, str(HERE / ".cache" / "ELLA"))
        from model import ELLA

        from safetensors.torch import load_model

        ella = ELLA().eval()
        load_model(ella, str(dest / "ella-sd15-random.safetensors"))
        feats = torch.randn(2, 128, 2048, generator=torch.Generator().manual_seed(1))
        s = timed(10, lambda: ella(feats, torch.tensor(500)))
        print(f"ella step b2 128 tokens  {s:8.4f} s")


if __name__ == "__main__":
    main()
