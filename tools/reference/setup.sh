#!/usr/bin/env bash
# Sets up the reference environment (diffusers on PyTorch, pinned) that generates the parity
# fixtures under tests/fixtures/. Developers run it; CI never needs Python.
#   tools/reference/setup.sh && tools/reference/.venv/bin/python tools/reference/make_scheduler_fixtures.py
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install -q --upgrade pip
"$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
"$here/.venv/bin/pip" install -q --no-deps DeepCache==0.1.1 pyjuice==2.6.3 torch-dct==0.1.6
