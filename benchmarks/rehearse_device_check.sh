#!/usr/bin/env bash
# Rehearse the GPU check as it will run on the lent machine, without a GPU: a fresh Python 3.12
# environment with the image's torch (2.11.0, the CUDA build from PyPI) and numpy (2.5.2) and the other
# image packages the stack relies on (benchmarks/gpu_image_packages.txt), nothing the image lacks; then
# the wheel set of benchmarks/gpu_wheels.py, installed by device_check.sh itself (`pip install --no-index
# --no-deps --target`), and `device_check.sh --dry-run` on that environment's python.
#
#   bash benchmarks/rehearse_device_check.sh        # results in work_dirs/rehearsal (OUT to change)
#
# The environment is .venv-rehearsal/ (git-ignored, never carried; about 5 GB: torch's CUDA libraries).
# REHEARSAL_PYTHON names the Python 3.12 to create it with. Needs PyPI; exits non-zero if any step fails.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv-rehearsal
OUT=${OUT:-$REPO/work_dirs/rehearsal}
cd "$REPO"

if [[ ! -x $VENV/bin/python ]]; then
  PY=${REHEARSAL_PYTHON:-$(command -v python3.12 || ls /root/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | tail -n 1)}
  [[ -n $PY ]] || { echo 'rehearse: no Python 3.12 found; set REHEARSAL_PYTHON' >&2; exit 2; }
  free_gib=$(df --output=avail -BG "$REPO" | tail -n 1 | tr -dc 0-9)
  ((free_gib >= 8)) || { echo "rehearse: $free_gib GiB free at $REPO, torch's CUDA build needs ~6" >&2; exit 2; }
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip packaging

# the wheel set, and from its manifest the image's packages the stack relies on
"$VENV/bin/python" benchmarks/gpu_wheels.py
mapfile -t IMAGE < <("$VENV/bin/python" -c '
import json
for name, entry in json.load(open(".gpu_wheels/manifest.json"))["from_image"].items():
    print(name + ("" if entry["version"] is None else "==" + entry["version"]))')
# setuptools: the image has one of unknown version; the latest has no pkg_resources, which the carried
# setuptools<81 must then provide. python-dateutil (matplotlib's): the image has six and no tzdata, so
# a 2.x (3 and later need tzdata).
"${PIP[@]}" install "${IMAGE[@]}" setuptools 'python-dateutil<3'

# nothing may be installed here that the image lacks
"$VENV/bin/python" - <<'EOF'
import importlib.metadata, sys
sys.path.insert(0, 'benchmarks')
from packaging.utils import canonicalize_name
from gpu_wheels import REPO, read_image_packages
image = read_image_packages(REPO / 'benchmarks' / 'gpu_image_packages.txt')
extra = sorted({canonicalize_name(d.metadata['Name']) for d in importlib.metadata.distributions()} - set(image))
if extra:
    sys.exit(f'rehearse: installed here but not in the image: {", ".join(extra)}')
for name, version in image.items():
    if version is not None and importlib.metadata.version(name) != str(version):
        sys.exit(f'rehearse: {name} {importlib.metadata.version(name)} here, {version} in the image')
print('rehearse: environment = image packages only:', ', '.join(
    f'{d.metadata["Name"]} {d.version}' for d in sorted(importlib.metadata.distributions(),
                                                           key=lambda d: d.metadata['Name'].lower())))
EOF

rm -rf "$OUT"
PYTHON=$VENV/bin/python OUT=$OUT OMP_NUM_THREADS=1 bash benchmarks/device_check.sh --dry-run
