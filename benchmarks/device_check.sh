#!/usr/bin/env bash
# The prepared GPU check of mmmultigrid: one machine with one NVIDIA GPU, at most 8 minutes, its results
# in 4 files under $OUT.
#
#   OUT=/path/for/results bash benchmarks/device_check.sh             # on a GPU machine
#   OUT=/path/for/results bash benchmarks/device_check.sh --dry-run   # the same steps on CPU, tiny sizes
#
# The Python is $PYTHON, else the checkout's .venv, else python3. Where it lacks the stack (mmengine,
# mmcv, mmaction2) and the checkout holds the wheel set of benchmarks/gpu_wheels.py (.gpu_wheels/, or
# $GPU_WHEELS), the wheels are installed with `pip install --no-index --no-deps --target` into a
# temporary folder put first on PYTHONPATH: so the check runs on a bare machine's own Python and torch.
#
# Steps, each under its own time limit and within the total budget (a step that fails or runs out of
# time is recorded and the next one runs):
#   env                 benchmarks/device_report.py env: Python, torch, CUDA, cuDNN, GPU, driver, the
#                       version and origin of every package, unmet requirements of the carried wheels,
#                       the upstream defects stack_fixes repairs         -> env.json, env.txt (in the log)
#   stack_fixes         tests/test_stack_fixes.py on this stack (its torch, its mmengine)
#   shape_cost_fp32     benchmarks/shape_cost.py, R50 I3D + SlowFast 8x8, full resolution and per-GPU
#                       batch: seconds per iteration and peak memory per grid shape -> shape_cost_fp32.json
#   plan_i3d, plan_slowfast
#                       tools/plan.py CONFIG --gpus 1 --dataset-length 240000 --measure-steps 3 --json:
#                       a training iteration timed at every grid shape, the predicted wall-clock speed-up
#                                                                     -> plan_i3d.json, plan_slowfast.json
#   shape_cost_amp      shape_cost under --amp (AmpOptimWrapper, float16 autocast)  -> shape_cost_amp.json
#   preflight_fp32      benchmarks/preflight_memory.py: the CUDA preflight check of both plans, then with
#                       the batch doubled until it must fail with PreflightError  -> preflight_fp32.json
#   preflight_amp       the same under --amp                                      -> preflight_amp.json
#   speedup             benchmarks/speedup.py --preset demo: baseline and multigrid side by side
#                                                                               -> speedup.json, the plot
#   compile             benchmarks/compile_cost.py --amp: every grid shape of the synthetic R3D plan,
#                       eager, then compiled as MultigridHook does by default (static shapes; the JSON
#                       keeps each shape compiled if time runs out)               -> compile_cost.json
#
# $OUT receives 4 files (a lent machine returns at most 8), rewritten after every step so that a run
# stopped from outside still returns what it measured:
#   summary.json            steps (status, seconds, last log line, the plan's predicted speed-up), env
#   device_check.log        this script's own output (nvidia-smi, the wheel install, each step's status)
#   speedup.png             the side-by-side plot
#   device_check.tar.gz     results/: every step's JSON and log, env.json, steps.tsv, install.log
# Exit status: 0 if every step passed, 1 if one did not, 2 if a prerequisite is missing.
# DEVICE_CHECK_STEPS='plan_i3d compile' runs only the steps named (and env), for a second try in the
# time left; DEVICE_CHECK_BUDGET_S sets the total budget (450 s; dry run 1350 s).
#
# --dry-run runs the steps on CPU at the smallest sizes, without a GPU, with 3x the time limits: --amp
# needs CUDA, so the AMP steps are skipped; compile runs in float32 with the 'eager' backend; speedup (minutes on CPU, no
# smaller preset) only has its arguments checked; the plan is measured for the synthetic config, 1 step.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MEASURE_STEPS=3
DATASET_LENGTH=240000
DRY_RUN=0 SLOWER=1
case "${1:-}" in
  --dry-run) DRY_RUN=1 SLOWER=3 ;;  # a shared CPU: time limits x3
  '') ;;
  *) echo "usage: OUT=DIR bash benchmarks/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac
# the 8 minutes, less a margin for the machine's start-up and the last step's kill-after
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-$((450 * SLOWER))}

[[ -n "${OUT:-}" ]] || { echo 'device_check: set OUT to the folder for the results' >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/device_check.log
BUNDLE=$OUT/device_check.tar.gz
SUMMARY=$OUT/summary.json
rm -f "$LOG" "$BUNDLE" "$SUMMARY" "$OUT/speedup.png"

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
die() { printf 'device_check: %s\n' "$*" | tee -a "$LOG" >&2; exit 2; }

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
RESULTS=$SCRATCH/results
mkdir -p "$RESULTS"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=${GPU_WHEELS:-$REPO/.gpu_wheels}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO"

# --- prerequisites -------------------------------------------------------------------------------------
if [[ $DRY_RUN == 0 ]]; then
  command -v nvidia-smi >/dev/null \
    || die 'no NVIDIA GPU: nvidia-smi not found (use --dry-run to run the steps on CPU)'
  nvidia-smi -L >/dev/null 2>&1 \
    || die 'nvidia-smi finds no GPU or no driver (use --dry-run to run the steps on CPU)'
fi
command -v "$PYTHON" >/dev/null || die "no Python at '$PYTHON' (set PYTHON, or run 'make venv')"
has_stack() { "$PYTHON" -c 'import torch, mmengine, mmcv, mmaction, mmmultigrid' 2>"$RESULTS/prerequisites.log"; }
CARRIED=
if ! has_stack; then
  missing=$(tail -n 1 "$RESULTS/prerequisites.log")
  compgen -G "$WHEELS/*.whl" >/dev/null \
    || die "$PYTHON lacks the pinned stack ($missing) and $WHEELS holds no wheels: set PYTHON, run" \
           "'make venv' (or pip install -r requirements.txt), or carry the wheel set of" \
           'benchmarks/gpu_wheels.py'
  CARRIED=$SCRATCH/site
  say "$PYTHON lacks the stack ($missing): installing $(compgen -G "$WHEELS/*.whl" | wc -l) wheels" \
      "from $WHEELS into $CARRIED"
  "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$CARRIED" "$WHEELS"/*.whl >"$RESULTS/install.log" 2>&1 \
    || die "pip could not install the wheels of $WHEELS: $(tail -n 1 "$RESULTS/install.log")"
  export PYTHONPATH="$CARRIED:$PYTHONPATH"
  has_stack || die "$PYTHON lacks the stack even with the wheels of $WHEELS:" \
                   "$(tail -n 1 "$RESULTS/prerequisites.log")"
fi
if [[ $DRY_RUN == 0 ]]; then
  "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
    || die "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') cannot use the GPU" \
           '(torch.cuda.is_available() is False): install a CUDA build of torch'
fi

{
  date -u
  if [[ $DRY_RUN == 1 ]]; then echo 'dry run: CPU, smallest sizes'; else nvidia-smi; fi
  echo "python: $PYTHON; stack: ${CARRIED:+wheels of $WHEELS in $CARRIED, then }$(
    "$PYTHON" -c 'import sys; print(sys.prefix)')"
} >>"$LOG" 2>&1

# --- steps ---------------------------------------------------------------------------------------------
printf 'step\tstatus\tseconds\n' >"$RESULTS/steps.tsv"
FAILED=0

# record NAME STATUS SECONDS: one row of steps.tsv, then summary.json and the bundle anew.
record() {
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS/steps.tsv"
  "$PYTHON" benchmarks/device_report.py summary --results "$RESULTS" --out "$SUMMARY" "${REPORT[@]}" \
    >>"$LOG" 2>&1 || say "   (summary.json not written)"
  tar -czf "$BUNDLE" -C "$SCRATCH" results
}
REPORT=()
[[ $DRY_RUN == 0 ]] || REPORT+=(--dry-run)

# run_step NAME LIMIT_S [--stdout FILE] COMMAND...: run it under the smaller of LIMIT_S and the time
# left (its output in results/NAME.log, or its stdout in FILE); record it.
run_step() {
  local name=$1 limit=$2 stdout start=$SECONDS status
  shift 2
  if [[ -n ${DEVICE_CHECK_STEPS:-} && $name != env && " $DEVICE_CHECK_STEPS " != *" $name "* ]]; then
    skip_step "$name" 'not in DEVICE_CHECK_STEPS'
    return
  fi
  stdout=$RESULTS/$name.log
  if [[ $1 == --stdout ]]; then stdout=$2; shift 2; fi
  local left=$((BUDGET_S - SECONDS))
  limit=$((limit * SLOWER))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then
    status='not run: out of time'
  else
    say "== $name (at most ${limit} s): $*"
    if timeout --kill-after=10 "$limit" "$@" >"$stdout" 2>>"$RESULTS/$name.log"; then status=ok
    else
      local rc=$?
      if ((rc == 124 || rc == 137)); then status="timeout after ${limit} s"
      else status="failed (exit $rc)"; fi
    fi
  fi
  [[ $status == ok ]] || FAILED=1
  say "   $status"
  record "$name" "$status" "$((SECONDS - start))"
}

skip_step() {  # skip_step NAME REASON
  say "== $1: skipped ($2)"
  record "$1" "skipped: $2" 0
}

if [[ $DRY_RUN == 1 ]]; then
  SHAPE_COST=(--device cpu --scale 0.0625 --warmup 0 --repeats 1 --threads 1)
  PREFLIGHT=(--device cpu)
  COMPILE=(--device cpu --backend eager --scale 0.25 --batch-divisor 8 --repeats 1 --threads 1
           --strategies eager static)
  PLAN_CONFIGS=(synthetic:configs/synthetic_r3d_multigrid.py)
  MEASURE_STEPS=1
else
  SHAPE_COST=(--device cuda --warmup 1 --repeats 2)
  PREFLIGHT=(--device cuda)
  COMPILE=(--device cuda --amp --repeats 3 --strategies eager static)
  PLAN_CONFIGS=(i3d:configs/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_multigrid.py
                slowfast:configs/slowfast_r50_8xb8-8x8x1-steplr-239e_kinetics400-rgb_multigrid.py)
fi
SPEEDUP=(--preset demo --work-dir "$SCRATCH/speedup" --synthetic-root "$SCRATCH/synthetic-demo"
         --out "$RESULTS/speedup.json" --plot "$OUT/speedup.png")

run_step env 40 --stdout "$RESULTS/env.txt" "$PYTHON" benchmarks/device_report.py env \
  --out "$RESULTS/env.json" ${CARRIED:+--carried "$CARRIED"}
cat "$RESULTS/env.txt" >>"$LOG"
run_step stack_fixes 45 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_stack_fixes.py
run_step shape_cost_fp32 50 "$PYTHON" benchmarks/shape_cost.py "${SHAPE_COST[@]}" \
  --out "$RESULTS/shape_cost_fp32.json"
for entry in "${PLAN_CONFIGS[@]}"; do
  if grep -q -- '--measure-steps' tools/plan.py; then
    run_step "plan_${entry%%:*}" 50 --stdout "$RESULTS/plan_${entry%%:*}.json" "$PYTHON" tools/plan.py \
      "${entry#*:}" --gpus 1 --dataset-length "$DATASET_LENGTH" --measure-steps "$MEASURE_STEPS" --json
  else
    skip_step "plan_${entry%%:*}" 'tools/plan.py has no --measure-steps'
  fi
done
if [[ $DRY_RUN == 0 ]]; then
  run_step shape_cost_amp 40 "$PYTHON" benchmarks/shape_cost.py "${SHAPE_COST[@]}" --amp \
    --out "$RESULTS/shape_cost_amp.json"
else
  skip_step shape_cost_amp '--amp needs CUDA'
fi
run_step preflight_fp32 35 "$PYTHON" benchmarks/preflight_memory.py "${PREFLIGHT[@]}" \
  --out "$RESULTS/preflight_fp32.json"
if [[ $DRY_RUN == 0 ]]; then
  run_step preflight_amp 35 "$PYTHON" benchmarks/preflight_memory.py "${PREFLIGHT[@]}" --amp \
    --out "$RESULTS/preflight_amp.json"
  run_step speedup 100 "$PYTHON" benchmarks/speedup.py "${SPEEDUP[@]}"
else
  skip_step preflight_amp '--amp needs CUDA'
  run_step speedup_arguments 30 "$PYTHON" -c \
    'import sys; sys.path.insert(0, "benchmarks"); import speedup; print(speedup.parse_args(sys.argv[1:]))' \
    "${SPEEDUP[@]}"
fi
REPORT+=(--final)
run_step compile 100 "$PYTHON" benchmarks/compile_cost.py "${COMPILE[@]}" --out "$RESULTS/compile_cost.json"

say "total ${SECONDS} s; results in $OUT"
column -t -s $'\t' "$RESULTS/steps.tsv" 2>/dev/null | tee -a "$LOG" || tee -a "$LOG" <"$RESULTS/steps.tsv"
exit "$FAILED"
