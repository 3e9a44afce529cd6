"""The loader's cost per grid shape at start-up and its data wait during training."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmaction.datasets import VideoDataset
from mmaction.registry import TRANSFORMS
from mmcv.transforms import BaseTransform
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.loader_check import (LoaderCost, LoaderWatch, format_loader_costs,
                                      loader_cost_warnings, measure_loader_costs)
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import build_runner_in_process, write_tiny_multigrid_config

TRAIN_TRANSFORMS = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]


def plan(batch_size: int = 1) -> MultigridPlan:
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[2, 3], gamma=0.1), 4, 0.1)
    return build_plan(BaseShape(batch_size, 8, 2, 32), MultigridOptions(), curve, 4, 1)


def test_measures_every_grid_shape_and_restores_the_random_state(
        synthetic_dataset: SyntheticDataset) -> None:
    init_default_scope('mmaction')
    dataset = VideoDataset(str(synthetic_dataset.train_ann),
                           [dict(type='ShapeVaryingPipeline', transforms=TRAIN_TRANSFORMS)],
                           data_prefix=dict(video=str(synthetic_dataset.video_dir)))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    costs = measure_loader_costs(dataset, plan(), samples=2)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    shapes = {c.shape for c in costs}
    assert shapes == set(plan().shape_segments()) | {GridShape(1, 8, 32)}
    base = next(c for c in costs if c.shape == GridShape(1, 8, 32))
    assert base.cost_vs_base == 1
    for c in costs:
        assert c.seconds_per_clip > 0
        assert c.cost_vs_base == pytest.approx(
            c.seconds_per_clip * c.shape.batch_size / base.seconds_per_clip)
    table = format_loader_costs(costs, plan(), workers=2)
    assert 'loader work per iteration vs base' in table and 'clips/s (2 workers)' in table
    assert len(table.splitlines()) == 3 + len(costs)


def test_warnings_name_the_shape_and_the_workers_needed() -> None:
    p = plan(8)
    base = GridShape(8, 8, 32)
    coarse = max(p.shape_segments(), key=lambda g: g.batch_size)  # 128 x 2 x 16
    costs = [LoaderCost(base, 0.010, 1.0), LoaderCost(coarse, 0.008, 0.008 * 128 / 0.08)]
    (message,) = loader_cost_warnings(p, costs, workers=4)
    assert message.startswith(f'grid shape (batch {coarse.batch_size}, T={coarse.clip_len}, '
                              f'S={coarse.crop_size}) of epochs')
    assert 'the loader does 12.8x the base shape\'s work per iteration (128 clips of 8.0 ms against 8 ' \
        'of 10.0 ms)' in message
    assert 'use at least 52 workers (train_dataloader.num_workers, now 4)' in message
    assert 'tools/extract_frames.py --config' in message
    assert loader_cost_warnings(p, [LoaderCost(base, 0.010, 1.0), LoaderCost(coarse, 0.001, 1.6)],
                                workers=4) == []


def test_watch_warns_once_when_the_loader_is_the_limit() -> None:
    shape = GridShape(32, 4, 16)
    watch = LoaderWatch(workers=2, skip=2, window=4)
    watch.epoch_started(0.0)
    now, messages = 0.0, []
    for _ in range(10):  # each iteration: 0.3 s waiting for data, then 0.1 s of compute
        watch.iteration_started(now + 0.3)
        now += 0.4
        messages.append(watch.iteration_ended(shape, now))
    assert [i for i, m in enumerate(messages) if m] == [5]  # after 2 skipped + 4 timed, once
    assert messages[5] == (
        'grid shape 32 x 4 x 16: the loader delivers 80.0 clips/s, the model trains 320.0 clips/s at '
        'this shape (waiting for data 75% of the time): use at least 8 workers '
        '(train_dataloader.num_workers, now 2) or rawframes with the smaller copies the grid shapes '
        'need (tools/extract_frames.py --config, ScaledRawFrameDecode in the train pipeline)')
    fast = LoaderWatch(workers=2, skip=0, window=3)
    fast.epoch_started(0.0)
    for i in range(6):  # 5% data wait: no message
        fast.iteration_started(i + 0.05)
        assert fast.iteration_ended(GridShape(8, 8, 32), i + 1.0) is None


@TRANSFORMS.register_module(force=True)
class SlowLoading(BaseTransform):
    """Stands for an expensive decode: sleeps ``seconds`` per clip."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def transform(self, results: dict) -> dict:
        time.sleep(self.seconds)
        return results


def test_training_logs_the_costs_and_the_data_wait(synthetic_dataset: SyntheticDataset,
                                                   tmp_path: Path) -> None:
    """A loader in the main process (num_workers=0) that spends 50 ms on every clip: at the large
    batches it is most of the iteration time, so the watch warns with the workers that would keep up."""
    config = write_tiny_multigrid_config(
        tmp_path / 'cfg.py', synthetic_dataset, hook='loader_check=1',
        extra="train_dataloader.update(num_workers=0, persistent_workers=False)\n"
              "train_dataloader['dataset']['pipeline'][0]['transforms'].insert("
              "3, dict(type='SlowLoading', seconds=0.05))")
    runner = build_runner_in_process(config, tmp_path / 'work', {})
    runner.train()
    log = next((tmp_path / 'work').rglob('*.log')).read_text()
    assert 'Loader cost per grid shape (clips loaded in the main process)' in log
    assert 'clips/s (0 workers)' in log
    warnings = [line for line in log.splitlines() if 'MultigridHook: grid shape ' in line]
    assert warnings and all('the loader delivers' in w and '(train_dataloader.num_workers, now 0)'
                            in w for w in warnings)
