"""ShapeVaryingPipeline on the real shared clips at their real resolution, through a real DataLoader.

Decoding dominates the runtime (about 0.05-0.3 s per clip on 2 cores), so the DataLoader test that
walks the long cycle runs the reference Kinetics plan scaled down to B=1 per GPU (every batch 1/8 of
the reference size, with the reference's T and S, i.e. full resolution), one epoch per long-cycle shape.
At the reference batch sizes, the sampler is checked for every segment, and one real 128-clip batch
(the largest) goes through the DataLoader; every distinct (T, S) of the reference plan is decoded at
full resolution through the I3D and SlowFast train pipelines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmaction.datasets import VideoDataset
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.data.sampler import GridIndex, MultigridSampler

CLIPS = ('demo.mp4', 'test.mp4', 'demo_spatiotemporal_det.mp4', 'test.avi')
SHORT_CLIP = 'demo_spatiotemporal_det.mp4'  # 57 frames: shorter than T0 * I0 = 64
T0, I0, S0 = 32, 2, 224
TAIL = [dict(type='Flip', flip_ratio=0.5), dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs')]
I3D_TRAIN = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=T0, frame_interval=I0, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='MultiScaleCrop', input_size=S0, scales=(1, 0.8), random_crop=False,
         max_wh_scale_gap=0),
    dict(type='Resize', scale=(S0, S0), keep_ratio=False),
] + TAIL
SLOWFAST_TRAIN = I3D_TRAIN[:4] + [
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(S0, S0), keep_ratio=False),
] + TAIL


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def kinetics_plan(batch_size: int) -> MultigridPlan:
    """The reference Kinetics plan (REFERENCE.md section 2) at ``batch_size`` clips per GPU."""
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[94, 154, 196], gamma=0.1),
                                239, 0.1)
    return build_plan(BaseShape(batch_size, T0, I0, S0), MultigridOptions(), curve, 239, 8)


def video_dataset(tmp_path: Path, videos: Path, repeats: int,
                  transforms: list[dict] = I3D_TRAIN) -> VideoDataset:
    """A VideoDataset listing the shared clips ``repeats`` times each, wrapped for multigrid."""
    ann = tmp_path / 'train_list.txt'
    ann.write_text(''.join(f'{name} {label}\n' for _ in range(repeats)
                           for label, name in enumerate(CLIPS)))
    return VideoDataset(str(ann), [dict(type='ShapeVaryingPipeline', transforms=transforms)],
                        data_prefix=dict(video=str(videos)))


def sample(pipeline: ShapeVaryingPipeline, videos: Path, name: str, shape: GridShape) -> dict:
    """Run ``pipeline`` on one clip as the dataset would, for a sample of grid shape ``shape``."""
    return pipeline(dict(filename=str(videos / name), label=0, start_index=0, modality='RGB',
                         sample_idx=GridIndex(0, shape)))


def distinct_shapes(plan: MultigridPlan) -> list[GridShape]:
    return sorted({g for s in plan.segments for g in s.shapes},
                  key=lambda g: (g.clip_len, g.crop_size, g.batch_size))


def test_reference_plan_short_cycles() -> None:
    """The batches the loader tests below rely on (REFERENCE.md section 2)."""
    plan = kinetics_plan(8)
    stage0 = [[(g.batch_size, g.clip_len, g.crop_size) for g in s.shapes] for s in plan.segments[:4]]
    assert stage0 == [[(128, 8, 112), (64, 8, 158), (64, 8, 158)],
                      [(64, 16, 112), (32, 16, 158), (32, 16, 158)],
                      [(64, 16, 112), (32, 16, 158), (16, 16, 224)],
                      [(32, 32, 112), (16, 32, 158), (8, 32, 224)]]
    scaled = kinetics_plan(1)
    for full, small in zip(plan.segments, scaled.segments):
        assert [(g.batch_size // 8, g.clip_len, g.crop_size) for g in full.shapes] == [
            (g.batch_size, g.clip_len, g.crop_size) for g in small.shapes]


def test_reference_batches_at_full_batch_size() -> None:
    """Every segment of the full-size plan yields its planned batch sizes (no decoding)."""
    plan = kinetics_plan(8)
    sampler = MultigridSampler(DefaultSampler(list(range(1000)), shuffle=True, seed=0), 8)
    sampler.set_plan(plan)
    for segment in plan.segments:
        sampler.sampler.set_epoch(segment.epoch_begin)
        batches = list(sampler)
        assert len(batches) == len(sampler) == segment.batches_per_epoch(1000)
        for i, batch in enumerate(batches):
            shape = segment.shapes[i % len(segment.shapes)]
            assert len(batch) == shape.batch_size and {b.shape for b in batch} == {shape}


def test_dataloader_batches_follow_plan_on_real_clips(tmp_path: Path, shared_videos: Path) -> None:
    """Persistent workers follow every long-cycle change (set_epoch only) and every short-cycle step."""
    plan = kinetics_plan(1)
    dataset = video_dataset(tmp_path, shared_videos, repeats=8)  # 32 clips: one B=1 short cycle
    batch_sampler = MultigridSampler(DefaultSampler(dataset, shuffle=True, seed=0), 1)
    batch_sampler.set_plan(plan)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=2, persistent_workers=True,
                        collate_fn=pseudo_collate)
    workers = None
    for segment in plan.segments[:4]:  # the four long-cycle shapes, cheapest first
        batch_sampler.sampler.set_epoch(segment.epoch_begin)  # what DistSamplerSeedHook does
        batches = list(loader)
        assert len(batches) == len(loader) == segment.batches_per_epoch(len(dataset)) > 0
        for i, batch in enumerate(batches):
            shape = segment.shapes[i % len(segment.shapes)]
            expected = (1, 3, shape.clip_len, shape.crop_size, shape.crop_size)
            assert len(batch['inputs']) == len(batch['data_samples']) == shape.batch_size
            assert all(x.shape == expected and x.dtype == torch.uint8 for x in batch['inputs'])
        iterator = loader._iterator
        assert workers is None or iterator._workers == workers, 'workers were restarted'
        workers = iterator._workers


def test_dataloader_largest_reference_batch(tmp_path: Path, shared_videos: Path) -> None:
    """The full-size plan's largest batch: 128 clips x 8 frames x 112^2, stacked from real clips."""
    plan = kinetics_plan(8)
    dataset = video_dataset(tmp_path, shared_videos, repeats=32)  # 128 clips: exactly one batch
    batch_sampler = MultigridSampler(DefaultSampler(dataset, shuffle=True, seed=0), 8)
    batch_sampler.set_plan(plan)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=2,
                        collate_fn=pseudo_collate)
    (batch,) = list(loader)
    assert len(batch['inputs']) == 128
    assert torch.stack(batch['inputs']).shape == (128, 1, 3, 8, 112, 112)


@pytest.mark.parametrize('transforms', [I3D_TRAIN, SLOWFAST_TRAIN], ids=['i3d', 'slowfast'])
def test_every_reference_shape_at_full_resolution(transforms: list[dict],
                                                  shared_videos: Path) -> None:
    pipeline = ShapeVaryingPipeline(transforms)
    shapes = distinct_shapes(kinetics_plan(8))
    assert len(shapes) == 8
    for i, shape in enumerate(shapes):
        out = sample(pipeline, shared_videos, CLIPS[i % len(CLIPS)], shape)
        assert out['inputs'].shape == (1, 3, shape.clip_len, shape.crop_size, shape.crop_size)


def index_pipeline() -> ShapeVaryingPipeline:
    return ShapeVaryingPipeline([
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=T0, frame_interval=I0, num_clips=1),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(S0, S0), keep_ratio=False)])


def test_drawn_strides_cover_their_range() -> None:
    """Each clip's stride is drawn uniformly from I0 .. I0*T0//T (inclusive), as in the reference."""
    pipeline = index_pipeline()
    pipeline.pipeline = lambda *shape: (lambda results: results)  # no decoding: strides only
    np.random.seed(0)
    for clip_len, high in ((8, 8), (16, 4), (32, 2)):
        assert pipeline.frame_intervals(clip_len) == (I0, high)
        drawn = [pipeline(dict(sample_idx=GridIndex(0, GridShape(1, clip_len, 112))))['grid_shape']
                 for _ in range(300)]
        assert {d[0] for d in drawn} == {clip_len} and {d[2] for d in drawn} == {112}
        counts = np.bincount([d[1] for d in drawn], minlength=high + 1)[I0:]
        assert len(counts) == high - I0 + 1 and counts.min() > 300 / len(counts) / 2


@pytest.mark.parametrize('name', CLIPS)
def test_frame_indices_stay_inside_video(name: str, shared_videos: Path) -> None:
    """At the smallest and largest stride of every T, decoded frames stay inside the video."""
    pipeline = index_pipeline()
    for clip_len in (8, 16, 32):
        for interval in sorted(set(pipeline.frame_intervals(clip_len))):
            out = pipeline.pipeline(clip_len, interval, 112)(dict(
                filename=str(shared_videos / name), label=0, start_index=0, modality='RGB'))
            inds, total = out['frame_inds'], out['total_frames']
            assert len(inds) == len(out['imgs']) == clip_len
            assert 0 <= inds.min() and inds.max() < total
            if clip_len * interval <= total:  # no wrap-around: the clip has the drawn stride
                assert set(np.diff(inds)) == {interval}
    if name == SHORT_CLIP:
        assert total < T0 * I0 and total < 8 * 8  # the large-stride case really wraps
    out = sample(pipeline, shared_videos, name, GridShape(1, 8, 112))
    assert out['frame_inds'].max() < out['total_frames']
    assert type(out['sample_idx']) is int and out['grid_shape'][0::2] == (8, 112)


def test_repr_shows_arguments() -> None:
    text = repr(ShapeVaryingPipeline(I3D_TRAIN, scale_jitter=False, skip_broken=True))
    assert text.startswith('ShapeVaryingPipeline(')
    for part in ('DecordInit', 'SampleFrames', 'MultiScaleCrop', 'PackActionInputs',
                 'scale_jitter=False', 'skip_broken=True'):
        assert part in text


@pytest.mark.parametrize('scale_jitter,low_at_112', [(True, 128), (False, 256)])
def test_random_rescale_lower_bound(scale_jitter: bool, low_at_112: int, shared_videos: Path) -> None:
    transforms = [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=T0, frame_interval=I0, num_clips=1),
        dict(type='DecordDecode'),
        dict(type='RandomRescale', scale_range=(256, 320)),
        dict(type='RandomCrop', size=S0),
    ] + TAIL
    pipeline = ShapeVaryingPipeline(transforms, scale_jitter=scale_jitter)

    def rescale_range(clip_len: int, crop: int) -> tuple[int, int]:
        composed = pipeline.pipeline(clip_len, I0, crop)
        return next(t for t in composed.transforms if type(t).__name__ == 'RandomRescale').scale_range

    assert rescale_range(8, 112) == (low_at_112, 320)
    assert rescale_range(32, 224) == (256, 320)  # the base crop: unchanged
    assert transforms[3]['scale_range'] == (256, 320)  # the user's config is not modified
    out = sample(pipeline, shared_videos, 'test.avi', GridShape(1, 8, 112))
    assert out['inputs'].shape == (1, 3, 8, 112, 112)


def test_rejects_pipeline_without_sampler() -> None:
    with pytest.raises(ValueError, match='SampleFrames'):
        ShapeVaryingPipeline([t for t in I3D_TRAIN if t['type'] != 'SampleFrames'])


def test_rejects_pipeline_without_final_crop() -> None:
    transforms = [t for t in I3D_TRAIN if not (t['type'] == 'Resize' and not t.get('keep_ratio', 1))]
    with pytest.raises(ValueError, match='final square crop or resize'):
        ShapeVaryingPipeline(transforms)


def test_plain_int_index_names_the_sampler(shared_videos: Path) -> None:
    pipeline = ShapeVaryingPipeline(I3D_TRAIN)
    with pytest.raises(RuntimeError, match='MultigridSampler'):
        pipeline(dict(filename=str(shared_videos / 'test.avi'), label=0, start_index=0,
                      modality='RGB', sample_idx=3))
