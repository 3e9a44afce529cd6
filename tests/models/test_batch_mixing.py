"""The batch-mixing guard: a TSM with a segment count other than the grid shape's is refused at start-up
(frames of different clips would be mixed), a correct one passes, and the model is left as it was."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.models.batch_mixing import find_batch_mixing, mixing_problem
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.plan import BaseShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.engine.preflight import PreflightError, run_preflight
from mmmultigrid.models.segments import SPATIAL_LONG_CYCLE_FACTORS
from runs import tiny_2d_model

PIPELINE = [dict(type='SampleFrames', clip_len=1, num_clips=4),
            dict(type='Resize', scale=(32, 32), keep_ratio=False)]


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def plan_2d(segments: int = 4, **options) -> MultigridPlan:
    """A 4-epoch plan of batch 2 x ``segments`` segments x 32 px."""
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[2, 3]), 4, 0.1)
    return build_plan(BaseShape(2, segments, 1, 32), MultigridOptions(**options), curve, 4)


def build(cfg: dict) -> torch.nn.Module:
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def test_correct_segment_count_passes() -> None:
    model = build(tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=4))
    assert find_batch_mixing(model, plan_2d(long_cycle_factors=SPATIAL_LONG_CYCLE_FACTORS)) is None


@pytest.mark.parametrize('head', ['TSNHead', 'TSMHead'])
def test_tsm_with_a_larger_segment_count_mixes_and_is_named(head: str) -> None:
    """num_segments=8 against clips of 4 segments: a batch of 2 clips is 8 frames, which the TSM
    backbone shifts as one clip; the guard names the shape, the reason and the keys."""
    model = build(tiny_2d_model('ResNetTSM', head, num_segments=8, head_segments=8))
    problem = find_batch_mixing(model, plan_2d(long_cycle=False, short_cycle=False))
    assert problem is not None
    assert problem.startswith('grid shape (batch 2, T=4, S=32) of epochs 0-')
    assert 'model.backbone.num_segments=8 (ResNetTSM)' in problem
    assert 'this shape has T=4 (the base, SampleFrames.num_clips, is 4)' in problem
    assert 'set num_segments and SampleFrames.num_clips to the same count' in problem
    reason = {'TSNHead': 'a clip alone fails but a batch of 2 runs',
              'TSMHead': 'a batch of 2 clips gives 1 outputs'}[head]
    assert reason in problem


def test_a_clip_whose_output_changes_with_its_batch_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that runs alone and in a batch, but adds the batch mean to every frame's features."""
    model = build(tiny_2d_model('ResNet', 'TSNHead'))
    plan = plan_2d(long_cycle=False, short_cycle=False)
    assert find_batch_mixing(model, plan) is None
    forward = model.backbone.forward
    monkeypatch.setattr(model.backbone, 'forward', lambda x: forward(x) + forward(x).mean(0))
    problem = find_batch_mixing(model, plan)
    assert problem is not None and "a clip's output changes with the other clip of its batch" in problem
    assert 'change MultigridHook.long_cycle_factors / short_cycle_factors' in problem
    assert 'num_segments' not in problem


def test_segment_count_that_only_runs_in_a_batch_is_caught() -> None:
    """T=2 against num_segments=4: a clip alone cannot run (2 frames), two clips run as one."""
    model = build(tiny_2d_model('ResNetTSM', 'TSNHead', num_segments=4))
    generator = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        problem = mixing_problem(model, 2, 32, generator)
    assert problem.startswith('a clip alone fails but a batch of 2 runs')


def test_temporal_long_cycle_on_a_fixed_count_is_refused_at_its_first_temporal_shape() -> None:
    """The default factors (T = 1, 2, 4 of 4 segments) given straight to build_plan, as a config that
    bypassed the plan's spatial-only rule would: the first shape that mixes is named."""
    model = build(tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=4))
    problem = find_batch_mixing(model, plan_2d())
    assert problem is not None and re.match(r'grid shape \(batch \d+, T=1, S=16\)', problem)


def test_tsn_passes_at_every_segment_count() -> None:
    model = build(tiny_2d_model('ResNet', 'TSNHead'))
    plan = plan_2d(segments=8)
    assert {g.clip_len for s in plan.segments for g in s.shapes} == {2, 4, 8}
    assert find_batch_mixing(model, plan) is None


def test_3d_model_passes_and_is_left_unchanged() -> None:
    model = build(dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3d', depth=18, base_channels=4, pretrained=None, pretrained2d=False,
                      inflate=(1, 1, 1, 1), conv1_stride_t=1, pool1_stride_t=1),
        cls_head=dict(type='I3DHead', num_classes=4, in_channels=32)))
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    assert find_batch_mixing(model, plan_2d(segments=8)) is None
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())


def test_preflight_raises_the_named_error() -> None:
    model = build(tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=8, head_segments=8))
    plan = plan_2d(long_cycle_factors=SPATIAL_LONG_CYCLE_FACTORS)
    pipeline = ShapeVaryingPipeline(PIPELINE + [dict(type='FormatShape', input_format='NCHW')])
    runner = SimpleNamespace(model=model, train_dataloader=SimpleNamespace(
        dataset=SimpleNamespace(pipeline=SimpleNamespace(transforms=[pipeline]))))
    with pytest.raises(PreflightError, match=re.escape('model.backbone.num_segments=8 (ResNetTSM), '
                                                       'model.cls_head.num_segments=8 (TSMHead) '
                                                       'reshape the frames of a batch')):
        run_preflight(runner, plan)
