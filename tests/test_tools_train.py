"""End-to-end tests of tools/train.py, tools/test.py and tools/dist_train.sh on tiny synthetic data.

Each run is a subprocess with torch's default ``weights_only`` and no ``TORCH_FORCE_*`` variable,
so resuming exercises the checkpoint safe globals of :mod:`mmmultigrid.stack_fixes`.
"""
from __future__ import annotations

import math
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch

from mmmultigrid.synthetic_videos import SyntheticDataset
from runs import REPO, free_port, run

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
