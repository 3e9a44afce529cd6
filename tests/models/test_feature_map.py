"""Feature map per grid shape: real mmaction2 forwards, warnings below MIN_FEATURE_SIZE, steps per shape."""
from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.models import feature_map
from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.models.embeddings import adapt_embeddings
from mmmultigrid.models.feature_map import MIN_FEATURE_SIZE, feature_map_warnings, format_feature_maps, \
    measure_feature_maps
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.plan import GridShape, MultigridPlan
from mmmultigrid.engine.preflight import run_preflight
from runs import train, write_tiny_multigrid_config
from test_preflight import HEAD, TAIL, make_plan, stub_runner, tiny_slowfast
from test_sampler import make_plan as make_sampler_plan
from test_sampler import make_sampler, run_epoch


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def r3d(**backbone) -> torch.nn.Module:
    """A real mmaction2 ResNet3d-18 recognizer, 4 channels wide: total spatial stride 32 by default."""
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(dict(type='ResNet3d', depth=18, base_channels=4, pretrained=None,
                           pretrained2d=False, inflate=(1, 1, 1, 1), conv1_stride_t=1,
                           pool1_stride_t=1), **backbone),
        cls_head=dict(type='I3DHead', num_classes=4, in_channels=32)))


def plan_64px(**options) -> MultigridPlan:
    """Base shape 1 clip x 16 frames x 64 px: short-cycle crops 32 and 45, long-cycle crops 45, 64."""
    return make_plan(batch_size=1, clip_len=16, crop_size=64, **options)


@pytest.mark.parametrize('build', [r3d, tiny_slowfast], ids=['r3d', 'slowfast'])
def test_reported_sizes_are_those_of_a_real_forward(build) -> None:
    model = build()
    plan = plan_64px()
    maps = measure_feature_maps(model, plan)
    assert list(maps) == list(dict.fromkeys(g for s in plan.segments for g in s.shapes))
    with torch.no_grad():
        for shape, outputs in maps.items():  # training mode, the shape's real batch
            inputs = torch.randn(shape.batch_size, 1, 3, shape.clip_len, shape.crop_size,
                                 shape.crop_size)
            feats = model.extract_feat(inputs)[0]
            feats = feats if isinstance(feats, tuple) else (feats, )
            assert outputs == tuple(tuple(f.shape[2:]) for f in feats)
            assert all(f.shape[0] == shape.batch_size for f in feats)
    assert len(maps[GridShape(1, 16, 64)]) == (2 if build is tiny_slowfast else 1)


def test_stride_32_at_64px_warns_for_the_32px_short_cycle_shapes() -> None:
    plan = plan_64px()
    maps = measure_feature_maps(r3d(), plan)
    assert maps[GridShape(1, 16, 64)] == ((8, 2, 2), )  # 64 / 32
    warnings = feature_map_warnings(plan, maps)
    small = [g for g in maps if g.crop_size == 32]
    assert len(warnings) == len(small) == 3 and all(maps[g][0][1:] == (1, 1) for g in small)
    first = warnings[0]
    assert first.startswith('grid shape (batch 16, T=4, S=32) of epochs 0-3, 7-10: ')
    assert "feature map 2x1x1 has H' or W' below MIN_FEATURE_SIZE=2" in first
    assert 'MultigridHook.short_cycle_factors (now [0.5, 0.707])' in first
    assert 'the base crop (the final crop/resize of the train pipeline, now 64)' in first
    assert 'smaller total spatial stride' in first
    assert not any('long_cycle_factors' in w for w in warnings)
    table = format_feature_maps(plan, maps)
    assert '2x1x1  (< 2)' in table and '8x2x2  (< 2)' not in table


def test_small_long_cycle_shape_names_long_cycle_factors() -> None:
    plan = plan_64px(short_cycle=False, long_cycle_factors=[(0.5, 0.5), (1, 1)])
    warnings = feature_map_warnings(plan, measure_feature_maps(r3d(), plan))
    assert len(warnings) == 1
    assert warnings[0].startswith('grid shape (batch 8, T=8, S=32) of epochs 0-7, 8-13: ')
    assert 'MultigridHook.long_cycle_factors (now [(0.5, 0.5), (1, 1)])' in warnings[0]
    assert 'short_cycle_factors' not in warnings[0]


def test_stride_16_does_not_warn() -> None:
    plan = plan_64px()
    maps = measure_feature_maps(r3d(pool1_stride_s=1), plan)
    assert min(h for outputs in maps.values() for _, h, _ in outputs) == MIN_FEATURE_SIZE
    assert maps[GridShape(16, 4, 32)] == ((2, 2, 2), )  # 32 / 16
    assert feature_map_warnings(plan, maps) == []


@pytest.mark.parametrize('grouped_bn', [False, True])
def test_training_flags_and_bn_buffers_are_unchanged(grouped_bn: bool) -> None:
    model = r3d()
    if grouped_bn:
        use_grouped_batchnorm(model, 8)
    model.train()
    model.cls_head.eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_feature_maps(model, plan_64px())
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    measure_feature_maps(model, plan_64px())
    assert not any(m.training for m in model.modules())


def test_a_shape_the_backbone_cannot_run_is_named() -> None:
    plan = make_plan(batch_size=1, clip_len=8, crop_size=16, short_cycle=False)  # T = 2, 4, 4, 8
    with pytest.raises(RuntimeError, match=r'grid shape \(batch 8, T=2, S=11\) of epochs 0-4: '):
        measure_feature_maps(tiny_slowfast(), plan)  # resample_rate 4 does not divide T=2


@pytest.mark.parametrize('length', [1, 97, 600, 2503])
@pytest.mark.parametrize('world_size', [1, 3])
def test_steps_per_shape_sum_to_the_plan_iterations(length: int, world_size: int) -> None:
    plan = make_sampler_plan(batch_size=2, world_size=world_size)
    samples = math.ceil(length / world_size)
    steps = plan.shape_iterations(samples)
    baseline, multigrid = plan.iterations(length)
    assert sum(steps.values()) == multigrid
    table = format_feature_maps(plan, dict.fromkeys(steps, ((2, 2, 2), )), samples)
    assert f'multigrid {multigrid}, baseline {baseline}' in table


@pytest.mark.parametrize('length', [97, 203])
def test_steps_per_shape_count_the_sampler_batches(length: int) -> None:
    """Steps per shape equal the batches of each shape that MultigridSampler yields over the run."""
    plan = make_sampler_plan(batch_size=1, world_size=1)
    sampler = make_sampler(length, plan)
    yielded = Counter(batch[0].shape for epoch in range(plan.max_epochs)
                      for batch in run_epoch(sampler, epoch))
    assert plan.shape_iterations(sampler.samples_per_rank) == {
        shape: yielded[shape] for shape in plan.shape_segments()}


def test_preflight_logs_the_table_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[tuple[str, int]] = []
    monkeypatch.setattr(feature_map, 'print_log',
                        lambda msg, logger, level=logging.INFO: logged.append((msg, level)))
    pipeline = ShapeVaryingPipeline(HEAD + [dict(type='Resize', scale=(64, 64), keep_ratio=False)]
                                    + TAIL)
    plan = make_plan(clip_len=16, crop_size=64)
    run_preflight(stub_runner(r3d(), pipeline), plan, samples_per_rank=100)
    table, level = logged[0]
    assert level == logging.INFO and table.startswith('Backbone output per grid shape')
    assert f'multigrid {plan.rank_iterations(100)[1]}, baseline 1000' in table
    warnings = [msg for msg, level in logged if level == logging.WARNING]
    assert len(warnings) == 3
    assert all(w.startswith('preflight: grid shape (batch ') and 'S=32)' in w for w in warnings)


def test_training_logs_the_table_at_start_up(tmp_path: Path) -> None:
    """The hook passes the sampler's clips per rank: the log has the steps. The clips do not exist,
    so the run stops at its first batch, after preflight."""
    (tmp_path / 'train.txt').write_text(''.join(f'missing{i}.avi {i % 4}\n' for i in range(24)))
    ds = SimpleNamespace(num_classes=4, train_ann=tmp_path / 'train.txt', video_dir=tmp_path)
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', ds, max_epochs=2, milestones=(1, ))
    proc = train(config, tmp_path / 'work', check=False)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert 'Backbone output per grid shape' in log
    assert 'Optimizer steps (24 clips per GPU per epoch): multigrid ' in log
    assert 'WARNING - preflight: grid shape (batch 16, T=2, S=16) of epochs 0-1' in log


def tiny_mvit(**backbone) -> torch.nn.Module:
    """A real mmaction2 MViT recognizer (2 stages, 8 channels): each stage gives [patch tokens,
    class token]."""
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(dict(type='MViT', arch=dict(embed_dims=8, num_layers=2, num_heads=1,
                                                  downscale_indices=[1]),
                           spatial_size=64, temporal_size=16), **backbone),
        cls_head=dict(type='MViTHead', in_channels=16, num_classes=4)))


def test_mvit_stage_outputs_are_measured() -> None:
    """MViT returns a [patch tokens, class token] list per stage; the patch tokens are the map."""
    plan = plan_64px()
    maps = measure_feature_maps(tiny_mvit(out_scales=[0, 1]), plan)
    # patch embedding: T/2, S/4; the second stage halves H and W
    assert maps[GridShape(1, 16, 64)] == ((8, 16, 16), (8, 8, 8))
    assert maps[GridShape(16, 4, 32)] == ((2, 8, 8), (2, 4, 4))
    assert '8x16x16 / 8x8x8' in format_feature_maps(plan, maps)


def test_pooled_outputs_have_no_map_and_no_warning() -> None:
    """TimeSformer returns its class token only (N x C): nothing to measure or warn about."""
    model = MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='TimeSformer', num_frames=16, img_size=64, patch_size=16, embed_dims=8,
                      num_heads=1, num_transformer_layers=1),
        cls_head=dict(type='TimeSformerHead', in_channels=8, num_classes=4)))
    adapt_embeddings(model)
    plan = plan_64px()
    maps = measure_feature_maps(model, plan)
    assert set(maps.values()) == {()}
    assert 'pooled' in format_feature_maps(plan, maps)
    assert feature_map_warnings(plan, maps) == []
