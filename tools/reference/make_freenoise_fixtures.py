"""FreeNoise's noise rearrangement from diffusers (`AnimateDiffFreeNoiseMixin.
_prepare_latents_free_noise`), for ml/sampling/tests/free_noise.rs.

The method is called unbound on a stand-in object carrying FreeNoise's settings, on noise of
23 frames (so the last window is cut short), context length 8 and stride 3;
`torch.randperm` is wrapped to record the permutations it draws, which the Rust test replays.
Also `repeat_context` on the first 8 frames.
Run: tools/reference/.venv/bin/python tools/reference/make_freenoise_fixtures.py
"""

import pathlib
import types

import diffusers
import diffusers.pipelines.free_noise_utils as fnu
import torch
from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "video-ref" / "free_noise.safetensors"


def main():
    g = torch.Generator().manual_seed(5)
    frames, length, stride = 23, 8, 3
    noise = torch.randn((1, 2, frames, 3, 4), generator=g)
    drawn = []
    real = torch.randperm

    def recording(n, generator=None, **kw):
        p = real(n, generator=generator, **kw)
        drawn.append(p.clone())
        return p

    torch.randperm = recording
    me = types.SimpleNamespace(
        _free_noise_context_length=length,
        _free_noise_context_stride=stride,
        _free_noise_noise_type="shuffle_context",
        vae_scale_factor=1,
    )
    # Latents given with all F frames come back as they are: diffusers' own draw is the path
    # that rearranges, so its randn_tensor is made to return the noise.
    fnu.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise.clone()
    torch.randperm = recording
    shuffled = AnimateDiffFreeNoiseMixin._prepare_latents_free_noise(
        me, 1, 2, frames, 3, 4, torch.float32, "cpu", torch.Generator().manual_seed(9), None
    )
    torch.randperm = real
    # repeat_context: the first window repeated. (diffusers draws its noise with F frames here,
    # comparing the context length with the string "repeat_context", and so repeats nothing;
    # the first window is given, as the method intends.)
    me._free_noise_noise_type = "repeat_context"
    fnu.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise[:, :, :length].clone()
    repeated = AnimateDiffFreeNoiseMixin._prepare_latents_free_noise(
        me, 1, 2, frames, 3, 4, torch.float32, "cpu", None, None
    )
    tensors = {"noise": noise, "shuffled": shuffled.contiguous(), "repeated": repeated.contiguous()}
    for i, p in enumerate(drawn):
        tensors[f"perm{i}"] = p.to(torch.int64)
    save_file(tensors, str(OUT), metadata={"diffusers": diffusers.__version__, "context_length": str(length), "stride": str(stride)})
    print("windows", len(drawn), [p.tolist() for p in drawn])


if __name__ == "__main__":
    main()
