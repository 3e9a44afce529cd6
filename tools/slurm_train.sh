#!/usr/bin/env bash
# Slurm training, as mmaction2's tools/slurm_train.sh:
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#       tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# srun starts GPUS tasks, GPUS_PER_NODE per node, each `train.py --launcher=slurm` (rank SLURM_PROCID,
# world size SLURM_NTASKS, master address the first host of SLURM_NODELIST). Env: MASTER_PORT (default
# 29500), GRES (default gpu:$GPUS_PER_NODE; set it empty on nodes without GPUs: training then uses gloo,
# see mmmultigrid/stack_fixes.py), PYTHON (default: the active environment's python). SRUN_ARGS is split
# on white space.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
GRES=${GRES-gpu:$GPUS_PER_NODE}
PYTHON=${PYTHON:-python}
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)

read -r -a srun_args <<< "$SRUN_ARGS"  # split, but not glob-expanded (e.g. --nodelist=node[1-2])

# ${a[@]+"${a[@]}"} expands an empty array without an error under `set -u` on bash < 4.4 too
PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "$PARTITION" --job-name="$JOB_NAME" ${GRES:+"--gres=$GRES"} --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 \
    ${srun_args[@]+"${srun_args[@]}"} "$PYTHON" -u "$TOOLS_DIR/train.py" "$CONFIG" \
    --work-dir="$WORK_DIR" --launcher=slurm "${@:5}"
