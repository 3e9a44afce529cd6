"""The shipped multigrid configs of mmaction2's Kinetics models train through every grid shape (CPU).

Each config runs unchanged except for what a CPU test needs: data on the synthetic set, no pretrained
download, a 64-px crop, batch 1, no validation, and a 4-epoch baseline schedule so that the plan visits
every long-cycle shape and every short-cycle crop in a few iterations.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import REPO, train
from test_multigrid_hook import iterations, read_trace

CONFIGS = sorted(p.name for p in (REPO / 'configs').glob('*kinetics400-rgb_multigrid.py'))
SMALL_SIZES = {'Resize': ('scale', {(-1, 256): (-1, 72), (224, 224): (64, 64)}),
               'MultiScaleCrop': ('input_size', {224: 64})}


def shrink(transforms: list[dict]) -> None:
    """Replace Kinetics sizes (256 short side, 224 crop) by CPU test sizes, in place."""
    for t in transforms:
        if t['type'] in SMALL_SIZES:
            key, sizes = SMALL_SIZES[t['type']]
            value = t[key]
            t[key] = sizes.get(tuple(value) if isinstance(value, (list, tuple)) else value, value)


def cpu_config(name: str, ds: SyntheticDataset, path: Path) -> Path:
    cfg = Config.fromfile(REPO / 'configs' / name)
    backbone = cfg.model.backbone
    backbone.pretrained = None
    if 'pretrained2d' in backbone:
        backbone.pretrained2d = False
    cfg.model.cls_head.num_classes = ds.num_classes
    loader = cfg.train_dataloader
    loader.update(batch_size=1, num_workers=1)
    loader.dataset.update(ann_file=str(ds.train_ann), data_prefix=dict(video=str(ds.video_dir)))
    shrink(loader.dataset.pipeline[0].transforms)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=4)
    for scheduler in cfg.param_scheduler:
        scheduler.end = min(scheduler.get('end', 4), 4 if scheduler.type != 'LinearLR' else 1)
        if scheduler.type == 'MultiStepLR':
            scheduler.milestones = [2, 3]
        if scheduler.type == 'CosineAnnealingLR':
            scheduler.T_max = 4
    cfg.custom_hooks = [dict(type='MultigridHook', trace=True)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.dump(path)
    return path


@pytest.mark.parametrize('name', CONFIGS)
def test_shipped_config_trains_every_grid_shape(name: str, synthetic_dataset: SyntheticDataset,
                                                tmp_path: Path) -> None:
    config = cpu_config(name, synthetic_dataset, tmp_path / 'config.py')
    plan = plan_from_config(Config.fromfile(config), 1)
    assert len({s.long_shape for s in plan.segments}) == 4
    train(config, tmp_path / 'work')
    trace = iterations(read_trace(tmp_path / 'work' / 'multigrid_trace.rank0.jsonl'))
    trained = {(r['batch_size'], r['clip_len'], r['crop_size']) for r in trace}
    assert trained == {(g.batch_size, g.clip_len, g.crop_size)
                       for s in plan.segments for g in s.shapes}
    assert {r['crop_size'] for r in trace} == {32, 45, 64}
