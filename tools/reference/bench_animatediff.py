"""The PyTorch side of the AnimateDiff CPU benchmark (see ml/models/benches/animatediff.rs).

    tools/reference/.venv/bin/python tools/reference/bench_animatediff.py SD15_DIR MOTION_DIR make
writes a random motion adapter of the released v2 size (diffusers' defaults: 8 heads, 32
positions, a mid-block module) to MOTION_DIR;
    tools/reference/.venv/bin/python tools/reference/bench_animatediff.py SD15_DIR MOTION_DIR [threads]
times one UNetMotionModel step at 16 frames of a 32×32 latent, batch 2, and the peak memory it
adds.
"""

import resource
import sys
import time

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel


def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    sd, motion = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "make":
        torch.manual_seed(0)
        adapter = MotionAdapter()
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_(0, 0.02)
        adapter.save_pretrained(motion, safe_serialization=True)
        print("adapter parameters", sum(p.numel() for p in adapter.parameters()))
        return
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} {threads} threads")
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=torch.float32)
    model = UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(motion)).eval()
    del unet
    x = torch.randn(2, 4, 16, 32, 32)
    ctx = torch.randn(2, 77, 768).repeat_interleave(16, dim=0)
    with torch.inference_mode():
        before = open("/proc/self/status").read()
        rss = int([l for l in before.splitlines() if l.startswith("VmRSS:")][0].split()[1])
        reset_peak()
        model(x, 500, ctx)
        peak = int([l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM:")][0].split()[1])
        runs = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(x, 500, ctx)
            runs.append(time.perf_counter() - t0)
    print(f"animatediff step 16x32x32 b2 {sum(runs) / len(runs):8.3f} s (mean of {[round(r, 3) for r in runs]})")
    added = (peak - rss) / 1024
    print(f"peak memory of the step  {added:8.1f} MiB = {added / 16:.1f} MiB per frame (of 16, CFG batch 2)")


if __name__ == "__main__":
    main()
