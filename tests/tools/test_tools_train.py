"""End-to-end tests of tools/train.py, tools/test.py, tools/dist_train.sh and tools/slurm_train.sh on
tiny synthetic data.

Each run is a subprocess with torch's default ``weights_only`` and no ``TORCH_FORCE_*`` variable,
so resuming exercises the checkpoint safe globals of :mod:`mmmultigrid.stack_fixes`.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs import wait_all, write_fake_slurm
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import REPO, TIMEOUT_S, clean_env, free_port, run, write_tiny_multigrid_config
from test_multigrid_hook import assert_ranks_agree

CONFIG = REPO / 'configs' / 'synthetic_r3d_baseline.py'


def tiny_options(ds: SyntheticDataset, max_epochs: int) -> list[str]:
    """``--cfg-options`` pointing the baseline config at `ds` (val and test on its val split)."""
    options = [f'model.cls_head.num_classes={ds.num_classes}',
               f'train_cfg.max_epochs={max_epochs}', 'default_hooks.logger.interval=1']
    for split, ann in (('train', ds.train_ann), ('val', ds.val_ann), ('test', ds.val_ann)):
        loader = f'{split}_dataloader'
        options += [f'{loader}.dataset.ann_file={ann}',
                    f'{loader}.dataset.data_prefix.video={ds.video_dir}',
                    f'{loader}.batch_size=4', f'{loader}.num_workers=1',
                    # pipeline[1] is SampleFrames, pipeline[5] the final Resize
                    f'{loader}.dataset.pipeline.1.clip_len=4',
                    f'{loader}.dataset.pipeline.5.scale=(32,32)']
    return options


def test_train_resume_and_test(synthetic_dataset: SyntheticDataset, tmp_path: Path) -> None:
    work_dir = tmp_path / 'work'
    train = [sys.executable, 'tools/train.py', str(CONFIG), '--work-dir', str(work_dir)]
    run(train + ['--cfg-options', *tiny_options(synthetic_dataset, max_epochs=2)])
    assert (work_dir / 'epoch_2.pth').is_file()
    assert not (work_dir / 'epoch_3.pth').exists()

    proc = run(train + ['--resume', '--cfg-options', *tiny_options(synthetic_dataset, max_epochs=3)])
    assert (work_dir / 'epoch_3.pth').is_file()
    assert 'resumed epoch: 2' in proc.stdout + proc.stderr
    assert torch.load(work_dir / 'epoch_3.pth')['meta']['epoch'] == 3  # torch's default weights_only

    dump = tmp_path / 'predictions.pkl'
    proc = run([sys.executable, 'tools/test.py', str(CONFIG), str(work_dir / 'epoch_3.pth'),
                '--work-dir', str(tmp_path / 'test'), '--dump', str(dump),
                '--cfg-options', *tiny_options(synthetic_dataset, max_epochs=3)])
    assert 'acc/top1' in proc.stdout + proc.stderr
    with dump.open('rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == len(synthetic_dataset.val_ann.read_text().splitlines())


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without GPU')
def test_amp_without_a_gpu_stops_with_a_message(tmp_path: Path) -> None:
    proc = run([sys.executable, 'tools/train.py', str(CONFIG), '--amp', '--work-dir', str(tmp_path)],
               check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ValueError: --amp needs a GPU and none was found: mmengine's AmpOptimWrapper does not run on "
        'CPU; train without --amp')


def test_test_rejects_non_pickle_dump(tmp_path: Path) -> None:
    proc = run([sys.executable, 'tools/test.py', str(CONFIG), 'missing.pth',
                '--dump', str(tmp_path / 'out.json')], check=False)
    assert proc.returncode != 0 and "--dump must name a .pkl or .pickle file" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU-only (gloo) path')
def test_dist_train_two_cpu_processes(synthetic_dataset: SyntheticDataset, tmp_path: Path) -> None:
    work_dir = tmp_path / 'dist'
    proc = run(['bash', 'tools/dist_train.sh', str(CONFIG), '2', '--work-dir', str(work_dir),
                '--cfg-options', *tiny_options(synthetic_dataset, max_epochs=1)],
               PORT=str(free_port()), PYTHON=sys.executable)
    assert (work_dir / 'epoch_1.pth').is_file()
    log = proc.stdout + proc.stderr
    for line in ("dist_cfg: {'backend': 'gloo'}", 'Distributed training: True',
                 'GPU number: 2'):  # mmengine reports the world size as "GPU number"
        assert line in log, line
    iters = math.ceil(len(synthetic_dataset.train_ann.read_text().splitlines()) / (2 * 4))
    assert re.search(rf'Epoch\(train\)\s+\[1\]\[{iters}/{iters}\]', log), 'rank batches'


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU-only (gloo) path')
def test_dist_train_two_nodes(two_rank_dataset: SyntheticDataset, tmp_path: Path) -> None:
    """Two ``dist_train.sh CONFIG 1`` invocations as nodes 0 and 1 (NNODES=2, NODE_RANK, MASTER_ADDR,
    PORT) train as one 2-process run."""
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', two_rank_dataset, max_epochs=4)
    work_dir = tmp_path / 'work'
    env = clean_env(NNODES='2', MASTER_ADDR='127.0.0.1', PORT=str(free_port()),
                    PYTHON=sys.executable)
    logs = [tmp_path / f'node{rank}.log' for rank in (0, 1)]
    nodes = []
    for rank, log in enumerate(logs):
        with log.open('w') as out:
            nodes.append(subprocess.Popen(
                ['bash', 'tools/dist_train.sh', str(config), '1', '--work-dir', str(work_dir)],
                cwd=REPO, env={**env, 'NODE_RANK': str(rank)}, stdout=out, stderr=subprocess.STDOUT))
    assert wait_all(nodes, TIMEOUT_S) == [0, 0], '\n'.join(log.read_text()[-3000:] for log in logs)
    assert_ranks_agree(config, work_dir, two_rank_dataset)


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU-only (gloo) path')
def test_slurm_train_two_tasks(two_rank_dataset: SyntheticDataset, tmp_path: Path) -> None:
    """``slurm_train.sh`` with GPUS=2 GPUS_PER_NODE=1: srun's command line as in mmaction2, and its two
    tasks (a stand-in srun sets ``SLURM_*``; the master address comes from ``scontrol``) train as one
    2-process run."""
    bin_dir = write_fake_slurm(tmp_path / 'bin')
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', two_rank_dataset, max_epochs=4)
    work_dir = tmp_path / 'work'
    run(['bash', 'tools/slurm_train.sh', 'cpu', 'multigrid', str(config), str(work_dir), '--seed', '0'],
        GPUS='2', GPUS_PER_NODE='1', CPUS_PER_TASK='1', SRUN_ARGS='--time=10 --exclusive',
        MASTER_PORT=str(free_port()), PYTHON=sys.executable, PATH=f'{bin_dir}:{os.environ["PATH"]}')
    assert json.loads((bin_dir / 'srun.json').read_text()) == [
        '-p', 'cpu', '--job-name=multigrid', '--gres=gpu:1', '--ntasks=2', '--ntasks-per-node=1',
        '--cpus-per-task=1', '--kill-on-bad-exit=1', '--time=10', '--exclusive', sys.executable, '-u',
        str(REPO / 'tools' / 'train.py'), str(config), f'--work-dir={work_dir}', '--launcher=slurm',
        '--seed', '0']
    assert_ranks_agree(config, work_dir, two_rank_dataset)


def test_slurm_train_defaults_and_options(tmp_path: Path) -> None:
    """mmaction2's defaults (8 tasks, 8 a node, 5 CPUs each); an empty GRES drops ``--gres`` (nodes
    without GPUs); fewer than four arguments is a usage error."""
    bin_dir = write_fake_slurm(tmp_path / 'bin')
    path = f'{bin_dir}:{os.environ["PATH"]}'
    command = ['bash', 'tools/slurm_train.sh', 'gpu', 'job', 'config.py', 'work']
    for env, resources in (({}, ['--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8']),
                           ({'GRES': '', 'GPUS': '4', 'GPUS_PER_NODE': '2'},
                            ['--ntasks=4', '--ntasks-per-node=2'])):
        run(command, PYTHON='true', PATH=path, **env)  # each task runs `true -u .../train.py ...`
        assert json.loads((bin_dir / 'srun.json').read_text()) == [
            '-p', 'gpu', '--job-name=job', *resources, '--cpus-per-task=5', '--kill-on-bad-exit=1',
            'true', '-u', str(REPO / 'tools' / 'train.py'), 'config.py', '--work-dir=work',
            '--launcher=slurm']
    proc = run(command[:-1], check=False, PATH=path)
    assert proc.returncode == 2
    assert 'usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR' in proc.stderr
