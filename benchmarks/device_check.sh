#!/usr/bin/env bash
# The prepared GPU check of mmmultigrid: one machine with one NVIDIA GPU, at most 8 minutes, everything
# it measures written under $OUT.
#
#   OUT=/path/for/results bash benchmarks/device_check.sh             # on the GPU machine
#   OUT=/path/for/results bash benchmarks/device_check.sh --dry-run   # the same steps on CPU, tiny sizes
#
# Steps, each under its own time limit and within the 8-minute total (a step that fails or runs out of
# time is recorded and the next one runs):
#   shape_cost_fp32     benchmarks/shape_cost.py, R50 I3D + SlowFast 8x8, full resolution and per-GPU
#                       batch: seconds per iteration and peak memory per grid shape -> shape_cost_fp32.json
#   shape_cost_amp      the same under --amp (AmpOptimWrapper, float16 autocast)  -> shape_cost_amp.json
#   preflight_fp32      benchmarks/preflight_memory.py: the CUDA preflight check of both plans, then with
#                       the batch doubled until it must fail with PreflightError  -> preflight_fp32.json
#   preflight_amp       the same under --amp                                      -> preflight_amp.json
#   speedup             benchmarks/speedup.py --preset demo: baseline and multigrid side by side
#                                                                      -> speedup.json, speedup.png
#   compile             benchmarks/compile_cost.py --amp: every grid shape of the synthetic R3D plan,
#                       eager, then compiled as MultigridHook does by default (static shapes; the JSON
#                       keeps each shape compiled if time runs out)               -> compile_cost.json
# Also env.txt (GPU, driver, versions), <step>.log (each step's output) and summary.tsv (step, status,
# seconds). Exit status: 0 if every step passed, 1 if one did not, 2 if a prerequisite is missing.
#
# --dry-run runs the steps on CPU at the smallest sizes, without a GPU: --amp needs CUDA, so the AMP
# steps are skipped and compile runs in float32 with the 'eager' backend; speedup (minutes on CPU, no
# smaller preset) only has its arguments checked.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-460}  # the 8 minutes, less a margin for start-up and kill-after
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  '') ;;
  *) echo "usage: OUT=DIR bash benchmarks/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac

die() { echo "device_check: $*" >&2; exit 2; }

[[ -n "${OUT:-}" ]] || die 'set OUT to the folder for the results'
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

# --- prerequisites -------------------------------------------------------------------------------------
if [[ $DRY_RUN == 0 ]]; then
  command -v nvidia-smi >/dev/null \
    || die 'no NVIDIA GPU: nvidia-smi not found (use --dry-run to run the steps on CPU)'
  nvidia-smi -L >/dev/null 2>&1 \
    || die 'nvidia-smi finds no GPU or no driver (use --dry-run to run the steps on CPU)'
fi
command -v "$PYTHON" >/dev/null || die "no Python at '$PYTHON' (set PYTHON, or run 'make venv')"
"$PYTHON" -c 'import torch, mmengine, mmaction, mmmultigrid' 2>"$OUT/prerequisites.log" \
  || die "$PYTHON lacks the pinned stack ($(tail -n 1 "$OUT/prerequisites.log")); set PYTHON, or run" \
         "'make venv' or pip install -r requirements.txt"
if [[ $DRY_RUN == 0 ]]; then
  "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
    || die "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') cannot use the GPU" \
           '(torch.cuda.is_available() is False): install a CUDA build of torch'
fi

{
  date -u
  if [[ $DRY_RUN == 1 ]]; then echo 'dry run: CPU, smallest sizes'; else nvidia-smi; fi
  "$PYTHON" -c 'import torch, mmengine, mmaction; print("torch", torch.__version__, "cuda",
torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "| mmengine", mmengine.__version__,
"| mmaction2", mmaction.__version__)'
} >"$OUT/env.txt" 2>&1

# --- steps ---------------------------------------------------------------------------------------------
printf 'step\tstatus\tseconds\n' >"$OUT/summary.tsv"
FAILED=0

# run_step NAME LIMIT_S COMMAND...: run it under the smaller of LIMIT_S and the time left; record it.
run_step() {
  local name=$1 limit=$2 start status
  shift 2
  local left=$((BUDGET_S - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then
    status='skipped: out of time'
  else
    echo "== $name (at most ${limit} s): $*"
    start=$SECONDS
    if timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1; then status=ok
    else
      local rc=$?
      if ((rc == 124 || rc == 137)); then status="timeout after ${limit} s"
      else status="failed (exit $rc)"; fi
    fi
  fi
  [[ $status == ok ]] || FAILED=1
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - ${start:-$SECONDS}))" >>"$OUT/summary.tsv"
  echo "   $status"
}

skip_step() {  # skip_step NAME REASON
  printf '%s\tskipped: %s\t0\n' "$1" "$2" >>"$OUT/summary.tsv"
  echo "== $1: skipped ($2)"
}

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
if [[ $DRY_RUN == 1 ]]; then
  SHAPE_COST=(--device cpu --scale 0.0625 --warmup 0 --repeats 1 --threads 1)
  PREFLIGHT=(--device cpu)
  COMPILE=(--device cpu --backend eager --scale 0.25 --batch-divisor 8 --repeats 1 --threads 1
           --strategies eager static)
else
  SHAPE_COST=(--device cuda --warmup 1 --repeats 2)
  PREFLIGHT=(--device cuda)
  COMPILE=(--device cuda --amp --repeats 3 --strategies eager static)
fi
SPEEDUP=(--preset demo --work-dir "$SCRATCH/speedup" --synthetic-root "$SCRATCH/synthetic-demo"
         --out "$OUT/speedup.json" --plot "$OUT/speedup.png")

run_step shape_cost_fp32 60 "$PYTHON" benchmarks/shape_cost.py "${SHAPE_COST[@]}" \
  --out "$OUT/shape_cost_fp32.json"
if [[ $DRY_RUN == 0 ]]; then
  run_step shape_cost_amp 50 "$PYTHON" benchmarks/shape_cost.py "${SHAPE_COST[@]}" --amp \
    --out "$OUT/shape_cost_amp.json"
else
  skip_step shape_cost_amp '--amp needs CUDA'
fi
run_step preflight_fp32 40 "$PYTHON" benchmarks/preflight_memory.py "${PREFLIGHT[@]}" \
  --out "$OUT/preflight_fp32.json"
if [[ $DRY_RUN == 0 ]]; then
  run_step preflight_amp 40 "$PYTHON" benchmarks/preflight_memory.py "${PREFLIGHT[@]}" --amp \
    --out "$OUT/preflight_amp.json"
  run_step speedup 130 "$PYTHON" benchmarks/speedup.py "${SPEEDUP[@]}"
else
  skip_step preflight_amp '--amp needs CUDA'
  run_step speedup_arguments 30 "$PYTHON" -c \
    'import sys; sys.path.insert(0, "benchmarks"); import speedup; print(speedup.parse_args(sys.argv[1:]))' \
    "${SPEEDUP[@]}"
fi
run_step compile 140 "$PYTHON" benchmarks/compile_cost.py "${COMPILE[@]}" --out "$OUT/compile_cost.json"

echo "total ${SECONDS} s; summary in $OUT/summary.tsv"
column -t -s $'\t' "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
exit "$FAILED"
