#!/usr/bin/env bash
# Fetch, here (with a package index), the few pure-Python packages that the GPU machines' image lacks
# (it has torch, timm, transformers, einops, tqdm, safetensors, pytest), and decord for the video runs of
# tools/gpu_e2e.sh; tools/gpu_check.sh installs them there.
# antlr4-python3-runtime 4.9.3 (hydra's parser runtime) exists only as a source archive, so it is built
# into a wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any --platform manylinux2014_x86_64 -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 webdataset==1.0.2 braceexpand==0.1.7
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2010_x86_64 -d .whl decord==0.6.0
ls -l .whl
