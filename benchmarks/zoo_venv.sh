#!/usr/bin/env bash
# The environment for zoo_compat.py's configs whose model comes from an optional package: .venv-zoo/ with
# torchvision (torch 2.14.1 + torchvision 0.29.1: PyPI's torchvision does not import beside the project's
# torch 2.13.0 CPU build), timm, mmpretrain and mmcls 1.x (the TSN/TSM custom backbones), and the
# project's stack from requirements.txt with torch left free and mmcv-lite 2.0.1 (mmcls 1.x's limit).
# Full mmcv's compiled ops (TIN's tin_shift) are not in it: mmcv-lite lacks them.
#
#   bash benchmarks/zoo_venv.sh
#   .venv-zoo/bin/python benchmarks/zoo_compat.py --configs CONFIG ... --out work_dirs/zoo/optional.json
#
# mmpretrain 1.2.0 and mmcls 1.0.0rc6 declare full mmcv, which would build from source; they install
# with --no-deps beside mmcv-lite (same `mmcv` module) and with the few packages they import.
# About 6 GB (torch's CUDA libraries; the model checks run on the CPU). Git-ignored, never carried.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv-zoo
cd "$REPO"

if [[ ! -x $VENV/bin/python ]]; then
  free_gib=$(df --output=avail -BG "$REPO" | tail -n 1 | tr -dc 0-9)
  ((free_gib >= 8)) || { echo "zoo_venv: $free_gib GiB free at $REPO, torch's CUDA build needs ~6" >&2; exit 2; }
  "${PYTHON:-python3.11}" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip 'setuptools<81' wheel
"${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" install $(grep -v -e '^#' -e '^torch==' requirements.txt) 'timm>=0.9'
# mmcls 1.0.0rc6 asserts mmcv < 2.1.0; mmaction2 1.2.0 and mmpretrain 1.2.0 accept 2.0.1 too
"${PIP[@]}" install mmcv-lite==2.0.1
"${PIP[@]}" install --no-deps mmpretrain==1.2.0 mmcls==1.0.0rc6
"${PIP[@]}" install modelindex mat4py einops
"${PIP[@]}" install --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'EOF'
import mmmultigrid  # noqa: F401  (the stack fixes, before mmaction's models import)
import mmaction.models  # noqa: F401
from mmaction.registry import MODELS

import mmcls, mmpretrain, timm, torch, torchvision  # noqa: E401
print(f'.venv-zoo: torch {torch.__version__}, torchvision {torchvision.__version__}, timm '
      f'{timm.__version__}, mmpretrain {mmpretrain.__version__}, mmcls {mmcls.__version__}; '
      f"MobileOneTSM registered: {MODELS.get('MobileOneTSM') is not None}")
EOF
