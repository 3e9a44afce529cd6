#!/usr/bin/env bash
# Issue 18's sweep on the `default` preset, in the order its answers are needed: lengths 1-8x (two seeds
# at 8x); then multigrid with precise BN (BN statistics recomputed at the base shape before each
# validation, as the reference recipe does; the weights are those of the same run without it), the
# default grid and the two others at 8x; then 16x, the baseline and the three grids, the grid without
# the T/4 shapes before the T/2-at-S/2 one since it alone reached the baseline's 8x accuracy (two seeds
# wherever a length is run alone); last, the default grid at 8x without the short cycle, which puts two
# thirds of even the base-shape phase's iterations at S/2 and S/sqrt2. Every invocation resumes (runs
# already in OUT are kept; a run cut off part-way continues from its last epoch checkpoint in WORK_DIR)
# and commits OUT after every completed length and seed, so this script can stop at any point and be
# started again, here or on another machine (with WORK_DIR, for the cut-off runs), to continue.
#
#   bash benchmarks/accuracy_sweep_cpu.sh          # JOBS=2: two runs train at once (accuracy only)
#
# OUT, WORK_DIR and SYNTHETIC_ROOT default to the repository's; set them to run from another checkout
# (e.g. a worktree pinned at one commit) while the results are committed in this one. Modeled time uses
# the calibration already in OUT (made on a quiet machine, precise BN's forward pass included); every
# grid's shapes are among the default grid's, so none needs a new calibration.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
OUT=${OUT:-$REPO/benchmarks/results/accuracy_sweep_cpu.json}
WORK_DIR=${WORK_DIR:-$REPO/work_dirs/accuracy_sweep}
SYNTHETIC_ROOT=${SYNTHETIC_ROOT:-$REPO/data/synthetic-default}
NO_T4_GRID='long_cycle_factors=[[0.5,0.7071],[0.5,1],[1,1]]'
T2_S2_GRID='long_cycle_factors=[[0.5,0.5],[0.5,0.7071],[1,1]]'
COMMON=(--validations 12 --extra-seeds 1 --resume --commit --jobs "${JOBS:-2}" --out "$OUT"
        --work-dir "$WORK_DIR" --synthetic-root "$SYNTHETIC_ROOT")
cd "$REPO"

sweep() { "$PY" -W ignore benchmarks/budget_sweep.py "${COMMON[@]}" "$@"; }
PRECISE_BN=precise_bn=32
sweep --lengths 1 2 4 8 --seed-lengths 8
sweep --lengths 8 --methods multigrid --hook-option "$PRECISE_BN"
sweep --lengths 8 --methods multigrid --hook-option "$PRECISE_BN" "$T2_S2_GRID"
sweep --lengths 8 --methods multigrid --hook-option "$PRECISE_BN" "$NO_T4_GRID"
sweep --lengths 16 --seed-lengths 16 --hook-option "$PRECISE_BN"
sweep --lengths 16 --seed-lengths 16 --methods multigrid --hook-option "$PRECISE_BN" "$NO_T4_GRID"
sweep --lengths 16 --seed-lengths 16 --methods multigrid --hook-option "$PRECISE_BN" "$T2_S2_GRID"
sweep --lengths 8 --seed-lengths 8 --methods multigrid --hook-option "$PRECISE_BN" short_cycle=false
