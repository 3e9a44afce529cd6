"""2D recognizers: the segments are the temporal axis; a fixed num_segments keeps the plan spatial."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmaction.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.baseline import plan_from_config
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.plan import DEFAULT_LONG_CYCLE_FACTORS, GridShape
from mmmultigrid.models.segments import SPATIAL_LONG_CYCLE_FACTORS, clip_batch, fixed_segments, map_size
from mmmultigrid.data.sampler import GridIndex
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import REPO, tiny_2d_model, train

SEGMENTS = 8
PIPELINE_2D = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=SEGMENTS),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='PackActionInputs'),
]


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def config_2d(model: dict[str, Any], hook: dict[str, Any] | None = None,
              transforms: list[dict] = PIPELINE_2D) -> Config:
    """A multigrid config of a Recognizer2D (12 epochs, step LR)."""
    return Config(dict(
        model=model,
        train_dataloader=dict(batch_size=4, sampler=dict(type='DefaultSampler'),
                              batch_sampler=dict(type='MultigridSampler'),
                              dataset=dict(type='VideoDataset', pipeline=[
                                  dict(type='ShapeVaryingPipeline', transforms=transforms)])),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=12),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        param_scheduler=[dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11])],
        custom_hooks=[dict(type='MultigridHook', **(hook or {}))]))


def clip_lens(plan) -> set[int]:
    return {g.clip_len for s in plan.segments for g in s.shapes}


@pytest.mark.parametrize('model, fixed', [
    (tiny_2d_model('ResNetTSM', 'TSMHead'), ['model.backbone.num_segments=4 (ResNetTSM)',
                                             'model.cls_head.num_segments=4 (TSMHead)']),
    (tiny_2d_model('ResNet', 'TRNHead'), ['model.cls_head.num_segments=4 (TRNHead)']),
    (tiny_2d_model('ResNet', 'TSNHead'), []),
    # ResNetTIN takes num_segments through **kwargs (ResNetTSM's); the config leaves the default 8.
    (dict(type='Recognizer2D', backbone=dict(type='ResNetTIN', depth=50)),
     ['model.backbone.num_segments=8 (ResNetTIN)']),
    (dict(type='Recognizer2D', backbone=dict(type='TANet', depth=50, num_segments=16)),
     ['model.backbone.num_segments=16 (TANet)']),
    (dict(type='Recognizer2D', backbone=dict(type='mmaction.ResNetTSM', depth=50)),
     ['model.backbone.num_segments=8 (ResNetTSM)']),
    (dict(type='Recognizer3D', backbone=dict(type='mmpretrain.ResNet'), cls_head=dict(type='I3DHead')),
     []),
])
def test_fixed_segments_from_the_config(model: dict, fixed: list[str]) -> None:
    assert [str(f) for f in fixed_segments(model)] == fixed


def test_tsn_varies_its_segments() -> None:
    """TSN's average consensus takes any count: the long cycle varies num_clips with the default
    factors, and the plan says what T is."""
    plan = plan_from_config(config_2d(tiny_2d_model('ResNet', 'TSNHead')), 1)
    assert plan.base.clip_len == SEGMENTS
    assert plan.options.long_cycle_factors == DEFAULT_LONG_CYCLE_FACTORS
    assert clip_lens(plan) == {2, 4, 8}
    assert plan.notes == ('T is the number of segments per clip (SampleFrames.num_clips of the '
                          'Recognizer2D); the segments of any T span the same part of the video', )


@pytest.mark.parametrize('model', [tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=SEGMENTS),
                                   tiny_2d_model('ResNet', 'TRNHead', num_segments=SEGMENTS)],
                         ids=['tsm', 'trn'])
def test_fixed_segment_count_makes_the_default_long_cycle_spatial(model: dict) -> None:
    plan = plan_from_config(config_2d(model), 1)
    assert plan.options.long_cycle_factors == SPATIAL_LONG_CYCLE_FACTORS == ((1.0, 0.5**0.5), (1.0, 1.0))
    assert clip_lens(plan) == {SEGMENTS}
    assert {g.crop_size for s in plan.segments for g in s.shapes} == {16, 23, 32}
    assert 'fix' in plan.notes[-1] and 'the long cycle is spatial only' in plan.notes[-1]
    assert plan.to_dict()['notes'] == list(plan.notes)


def test_temporal_factors_given_to_a_fixed_model_are_refused() -> None:
    model = tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=SEGMENTS)
    with pytest.raises(ValueError, match=re.escape(
            'MultigridHook.long_cycle_factors entry (0.5, 1) asks for 4 of the 8 segments, but '
            'model.backbone.num_segments=8 (ResNetTSM), model.cls_head.num_segments=8 (TSMHead) fix the '
            'segment count')):
        plan_from_config(config_2d(model, dict(long_cycle_factors=[(0.5, 1), (1, 1)])), 1)
    spatial = plan_from_config(config_2d(model, dict(long_cycle_factors=[(1, 0.5), (1, 1)])), 1)
    assert clip_lens(spatial) == {SEGMENTS} and spatial.notes[1:] == ()
    short_only = plan_from_config(config_2d(model, dict(long_cycle=False)), 1)
    assert clip_lens(short_only) == {SEGMENTS}


def test_plan_of_a_3d_model_has_no_notes() -> None:
    plan = plan_from_config(Config.fromfile(str(REPO / 'configs' / 'synthetic_r3d_multigrid.py')), 1)
    assert plan.notes == () and 'notes' not in plan.to_dict()


def load(pipeline: ShapeVaryingPipeline, ds: SyntheticDataset, shape: GridShape) -> dict:
    name, label = ds.train_ann.read_text().split('\n')[0].split()
    return pipeline(dict(filename=str(ds.video_dir / name), label=int(label), start_index=0,
                         modality='RGB', sample_idx=GridIndex(0, shape)))


@pytest.mark.parametrize('segments', [2, 4, 8])
def test_pipeline_varies_the_segments_over_the_whole_video(segments: int,
                                                           synthetic_dataset: SyntheticDataset) -> None:
    """num_clips=T, one frame per segment, spread over all 32 frames; clip_len and interval stay."""
    pipeline = ShapeVaryingPipeline(PIPELINE_2D[:-1])  # unpacked: the sampler's keys stay
    assert pipeline.frame_intervals(segments) == (1, 1)
    np.random.seed(0)
    for _ in range(5):
        out = load(pipeline, synthetic_dataset, GridShape(4, segments, 16))
        assert out['imgs'].shape == (segments, 3, 16, 16)
        assert (out['num_clips'], out['clip_len'], out['frame_interval']) == (segments, 1, 1)
        width = out['total_frames'] // segments
        assert [i // width for i in out['frame_inds']] == list(range(segments))


def test_uniform_sample_varies_the_clip_length(synthetic_dataset: SyntheticDataset) -> None:
    """UniformSample (MViT, UniFormerV2): clip_len=T frames spread over the video, no interval."""
    transforms = [dict(t) for t in PIPELINE_2D[:-1]]
    transforms[1] = dict(type='UniformSample', clip_len=16, num_clips=1)
    transforms[-1] = dict(type='FormatShape', input_format='NCTHW')
    pipeline = ShapeVaryingPipeline(transforms)
    assert pipeline.base.clip_len == 16 and pipeline.frame_intervals(4) == (1, 1)
    plan = plan_from_config(config_2d(dict(type='Recognizer3D'), transforms=transforms), 1)
    assert clip_lens(plan) == {4, 8, 16}
    assert plan.notes == ('T is UniformSample.clip_len: frames spread over the whole video, no frame '
                          'interval', )
    for clip_len in (4, 8, 16):
        out = load(pipeline, synthetic_dataset, GridShape(1, clip_len, 16))
        assert out['imgs'].shape == (1, 3, clip_len, 16, 16)
        inds, width = out['frame_inds'], (out['total_frames'] - 1) / clip_len
        assert len(inds) == clip_len and (np.diff(inds) >= 0).all()
        assert inds[0] <= width + 1 and inds[-1] >= out['total_frames'] - 2 - width  # the whole video


def test_clip_batch_and_map_size_follow_the_recognizer_layout() -> None:
    model = MODELS.build(tiny_2d_model('ResNet', 'TSNHead'))
    inputs = clip_batch(model, 2, 3, 32)
    assert inputs.shape == (2, 3, 3, 32, 32) and not inputs.any()
    feats = model.extract_feat(inputs, stage='backbone')[0]
    assert feats.shape == (6, 512, 1, 1) and map_size(feats, 2) == (3, 1, 1)
    flow = MODELS.build(dict(tiny_2d_model('ResNet', 'TSNHead'),
                             backbone=dict(type='ResNet', depth=18, in_channels=10)))
    assert clip_batch(flow, 1, 3, 32).shape == (1, 3, 10, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert clip_batch(model, 1, 3, 32, generator).std() > 0.5


def test_tsm_trains_at_its_spatial_shapes(tmp_path: Path, synthetic_dataset: SyntheticDataset) -> None:
    """A tiny TSM through tools/train.py: the plan note in the log, every batch of 4 segments at the
    planned crops, preflight (batch-mixing check included) passed. Batches of 12 do not split into
    BN groups of 8, which does not matter for a 2D model's BatchNorm2d: preflight does not refuse it."""
    ds = synthetic_dataset
    config = tmp_path / 'tsm.py'
    config.write_text(f"""
_base_ = ['{REPO}/configs/synthetic_r3d_multigrid.py']
model = {dict(tiny_2d_model('ResNetTSM', 'TSMHead', num_segments=4, num_classes=ds.num_classes),
              _delete_=True)!r}
train_pipeline = {[dict(t, num_clips=4) if t['type'] == 'SampleFrames' else t for t in PIPELINE_2D]!r}
train_dataloader = dict(batch_size=3, num_workers=1, persistent_workers=True,
    dataset=dict(ann_file='{ds.train_ann}', data_prefix=dict(video='{ds.video_dir}'),
                 pipeline=[dict(type='ShapeVaryingPipeline', transforms=train_pipeline)]))
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(max_epochs=2, val_interval=1)
param_scheduler = [dict(type='MultiStepLR', begin=0, end=2, by_epoch=True, milestones=[1])]
custom_hooks = [dict(type='MultigridHook', trace=True)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=-1, save_last=False,
                                                             save_best=None))
""")
    train(config, tmp_path / 'work')
    log = next((tmp_path / 'work').glob('*/*.log')).read_text()
    assert 'fix the segment count: the long cycle is spatial only' in log
    assert 'preflight: 3 grid shapes checked' in log
    rows = [json.loads(line) for line in (tmp_path / 'work' / 'multigrid_trace.rank0.jsonl')
            .read_text().splitlines() if '"clip_len"' in line]
    assert {r['clip_len'] for r in rows} == {4}
    assert {r['crop_size'] for r in rows} == {16, 23, 32}
