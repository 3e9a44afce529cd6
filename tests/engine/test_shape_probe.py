"""mmmultigrid/engine/shape_probe.py: the probe shapes of a plan, the probe configs, the table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmengine.config import Config

from mmmultigrid.baseline import plan_from_config, train_transforms
from mmmultigrid.data.pipeline import describe_pipeline
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from mmmultigrid.engine.shape_probe import (ProbeShape, format_advice, format_probes, long_cycle_shapes,
                                            long_cycle_without, parse_shape, probe_config, probe_schedule,
                                            share_at_base, transfer_config, validation_curve, weak_shapes)
from runs import write_tiny_multigrid_config


@pytest.fixture
def tiny(tmp_path: Path, synthetic_dataset: SyntheticDataset) -> Config:
    """The tiny multigrid config (T=8 at interval 2, 32 px; its val pipeline ends in a CenterCrop)."""
    return Config.fromfile(str(write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset,
                                                           validate=True)))


def names(pipeline: list[dict]) -> list[str]:
    return [t['type'] for t in pipeline]


def test_long_cycle_shapes_span_the_base_clip(tiny: Config) -> None:
    """Each long-cycle (T, S) once, in training order, at the interval where T frames span the base
    clip's 16 frames; the base shape last."""
    base = describe_pipeline(train_transforms(tiny))
    plan = plan_from_config(tiny, 1)
    shapes = long_cycle_shapes(plan, base)
    assert sorted((s.clip_len, s.frame_interval, s.crop_size, s.is_base) for s in shapes) == [
        (2, 8, 23, False), (4, 4, 23, False), (4, 4, 32, False), (8, 2, 32, True)]
    first = plan.segments[0].long_shape
    assert (shapes[0].clip_len, shapes[0].crop_size) == (first.clip_len, first.crop_size)
    assert shapes[-1].is_base
    assert shapes[0].name == 'T2_I8_S23' and str(shapes[-1]) == '8 x 32 (interval 2) (base)'


def test_parse_shape(tiny: Config) -> None:
    base = describe_pipeline(train_transforms(tiny))
    assert parse_shape('4x24', base) == ProbeShape(4, 4, 24)
    assert parse_shape('16X32', base) == ProbeShape(16, 2, 32)  # longer than the base: I0
    assert parse_shape('8x32', base).is_base
    for bad in ('4x', 'ax24', '0x24', '4x24x2'):
        with pytest.raises(ValueError, match=f'--shapes takes TxS|--shapes: T and S must be positive'):
            parse_shape(bad, base)


def test_probe_config_is_the_plain_baseline_at_the_shape(tiny: Config) -> None:
    probe = probe_config(tiny, ProbeShape(4, 4, 23), epochs=12)
    loader = probe.train_dataloader
    assert 'batch_sampler' not in loader and probe.custom_hooks == []
    assert loader.batch_size == tiny.train_dataloader.batch_size
    train = loader.dataset.pipeline
    assert names(train) == names(train_transforms(tiny))  # ShapeVaryingPipeline unwrapped
    assert (train[1]['clip_len'], train[1]['frame_interval']) == (4, 4)
    assert train[5]['scale'] == (23, 23)
    val = probe.val_dataloader.dataset.pipeline
    assert (val[1]['clip_len'], val[1]['frame_interval'], val[1]['test_mode']) == (4, 4, True)
    # the val view stays the base crop's (CenterCrop 32), resampled to 23 px as training does
    assert names(val)[3:6] == ['Resize', 'CenterCrop', 'Resize']
    assert val[4]['crop_size'] == 32 and val[5] == dict(type='Resize', keep_ratio=False, scale=(23, 23))
    assert probe.train_cfg == dict(type='EpochBasedTrainLoop', max_epochs=12, val_begin=1,
                                   val_interval=3)
    assert probe.param_scheduler == probe_schedule(12)
    assert probe.default_hooks.checkpoint.interval == 12
    # the user's config is unchanged
    assert tiny.custom_hooks[0]['type'] == 'MultigridHook'
    assert tiny.train_dataloader.dataset.pipeline[0]['type'] == 'ShapeVaryingPipeline'


def test_probe_config_keeps_the_base_crop_at_the_base_shape(tiny: Config) -> None:
    val = probe_config(tiny, ProbeShape(8, 2, 32, is_base=True), 6).val_dataloader.dataset.pipeline
    assert names(val) == names(tiny.val_dataloader.dataset.pipeline)


def test_probe_config_needs_a_val_pipeline(tiny: Config) -> None:
    tiny.val_dataloader = None
    with pytest.raises(ValueError, match='needs val_dataloader.dataset.pipeline'):
        probe_config(tiny, ProbeShape(4, 4, 23), 6)
    with pytest.raises(ValueError, match='--epochs must be >= 1, got 0'):
        probe_config(tiny, ProbeShape(4, 4, 23), 0)


def test_probe_schedule() -> None:
    assert probe_schedule(12)[0]['end'] == 2 and probe_schedule(12)[1]['milestones'] == [8, 10]
    assert probe_schedule(1)[1]['milestones'] == []
    assert probe_schedule(3)[1]['milestones'] == [2]


def test_validation_curve_and_table(tmp_path: Path) -> None:
    scalars = tmp_path / '20261202_000000' / 'vis_data' / 'scalars.json'
    scalars.parent.mkdir(parents=True)
    scalars.write_text('\n'.join(json.dumps(r) for r in (
        dict(loss=2.0, step=1), {'acc/top1': 0.25, 'step': 2}, {'acc/top1': 0.5, 'step': 4})))
    assert validation_curve(tmp_path) == [dict(epoch=2, top1=0.25), dict(epoch=4, top1=0.5)]
    with pytest.raises(FileNotFoundError, match='the run logged nothing'):
        validation_curve(tmp_path / 'missing')
    table = format_probes({ProbeShape(4, 4, 23): [dict(epoch=2, top1=0.1), dict(epoch=4, top1=0.2)],
                           ProbeShape(8, 2, 32, True): [dict(epoch=4, top1=0.5)]})
    lines = table.splitlines()
    assert lines[0].split() == ['T', 'x', 'S', '(interval)', 'ep', '2', 'ep', '4', 'last', 'vs', 'base']
    assert '10.0%' in lines[1] and '20.0%' in lines[1] and lines[1].endswith('-30.0 points')
    assert ' - ' in lines[2] and '50.0%' in lines[2] and 'points' not in lines[2]
    with_transfer = format_probes({ProbeShape(4, 4, 23): [dict(epoch=4, top1=0.2)],
                                   ProbeShape(8, 2, 32, True): [dict(epoch=4, top1=0.5)]},
                                  at_base={ProbeShape(4, 4, 23): 0.0625}).splitlines()
    assert with_transfer[1].endswith('-30.0 points; at the base shape 6.2% (31% of its own)')
    assert with_transfer[2].endswith('50.0%  ')


def test_transfer_config_tests_at_the_base_shape(tiny: Config, tmp_path: Path) -> None:
    """The base probe's validation set and pipeline become the test's, with the checkpoint loaded and
    BN statistics recomputed from the base probe's training batches first."""
    base = probe_config(tiny, long_cycle_shapes(plan_from_config(tiny, 1), describe_pipeline(
        train_transforms(tiny), 'train'))[-1], 2)
    cfg = transfer_config(base, tmp_path / 'epoch_2.pth', 16)
    assert cfg.test_dataloader == base.val_dataloader and cfg.test_evaluator == base.val_evaluator
    assert cfg.load_from == str(tmp_path / 'epoch_2.pth') and base.get('load_from') is None
    assert cfg.custom_hooks[-1] == dict(type='PreciseBNTestHook', num_batches=16)
    assert cfg.train_dataloader == base.train_dataloader and not base.get('custom_hooks')


def test_advice_names_the_shapes_that_do_not_carry_over(tiny: Config) -> None:
    """A probe whose weights keep less than ``min_share`` of their own top-1 at the base shape is named,
    with the plan's long_cycle_factors without it (the tiny plan: 2 x 23, 4 x 23, 4 x 32, 8 x 32)."""
    plan = plan_from_config(tiny, 1)
    t4, t2, t2_full, base = (ProbeShape(2, 8, 23), ProbeShape(4, 4, 23), ProbeShape(4, 4, 32),
                             ProbeShape(8, 2, 32, True))
    curves = {t4: [dict(epoch=12, top1=0.49)], t2: [dict(epoch=12, top1=0.56)],
              t2_full: [dict(epoch=12, top1=0.6)], base: [dict(epoch=12, top1=0.7)]}
    at_base = {t4: 0.174, t2: 0.475, t2_full: 0.54}
    assert share_at_base(curves[t4], 0.174) == pytest.approx(0.174 / 0.49)
    assert share_at_base([dict(epoch=12, top1=0.0)], 0.1) is None and share_at_base([], 0.1) is None
    assert weak_shapes(curves, at_base, 0.5) == [t4]
    assert weak_shapes(curves, at_base, 0.3) == []
    assert weak_shapes(curves, at_base, 0.95) == [t4, t2, t2_full]
    with pytest.raises(ValueError, match=r'--min-share must be in \(0, 1\], got 0'):
        weak_shapes(curves, at_base, 0)
    half = 0.5**0.5
    assert long_cycle_without(plan, [t4]) == ((0.5, half), (0.5, 1.0), (1.0, 1.0))
    assert long_cycle_without(plan, [ProbeShape(4, 4, 24)]) == plan.options.long_cycle_factors
    assert format_advice(plan, curves, at_base, 0.5) == (
        'Below 50% of their own top-1 at the base shape: 2 x 23 (interval 8) keeps 36%; a long cycle '
        'without them: MultigridHook(long_cycle_factors=[(0.5, 0.7071), (0.5, 1), (1, 1)]) (what each '
        'grid saves: docs/choosing_the_grid.md).')
    assert format_advice(plan, curves, at_base, 0.3).startswith(
        'Every probed shape keeps at least 30% of its own top-1 at the base shape')
    assert 'MultigridHook(long_cycle=False)' in format_advice(plan, curves, at_base, 0.95)
    not_in_plan = {ProbeShape(4, 4, 24): [dict(epoch=1, top1=0.5)], base: curves[base]}
    assert "none of them is in the plan's long_cycle_factors" in format_advice(
        plan, not_in_plan, {ProbeShape(4, 4, 24): 0.1}, 0.5)
