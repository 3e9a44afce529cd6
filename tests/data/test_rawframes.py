"""Rawframes with smaller copies: extraction, ``ScaledRawFrameDecode``, and both under multigrid.

Real files throughout: frames extracted from the shared clips (340x256 and 320x240), broken copies of
those frames, and the ``RawframeDataset`` + ``MultigridSampler`` + ``DataLoader`` path.
"""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest
import torch
from mmaction.datasets import RawframeDataset
from mmaction.datasets.transforms import RawFrameDecode
from mmaction.registry import TRANSFORMS
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline, describe_pipeline, needed_short_side
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, build_plan
from mmmultigrid.data.rawframes import (COPY_DIR, ScaledRawFrameDecode, copies_for_config, extract_dataset,
                                   extract_frames)
from mmmultigrid.data.sampler import GridIndex, MultigridSampler

REPO = Path(__file__).resolve().parents[2]
COPIES = (128, 64)
AVI_FRAMES = 164
I3D_CROP = dict(type='MultiScaleCrop', input_size=224, scales=(1, 0.8), random_crop=False,
                max_wh_scale_gap=0)
TRAIN = [
    dict(type='SampleFrames', clip_len=16, frame_interval=2, num_clips=1),
    dict(type='ScaledRawFrameDecode', copies=COPIES),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs', meta_keys=('frame_dir', 'grid_shape')),
]


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


@pytest.fixture(scope='module')
def frames(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames (and copies at short sides 128 and 64) of test.mp4 (340x256) and test.avi (320x240)."""
    root = tmp_path_factory.mktemp('rawframes')
    for name in ('test.mp4', 'test.avi'):
        extract_frames(shared_videos / name, root / name.replace('.', '_'), COPIES)
    return root


def clip(frame_dir: Path, inds: list[int]) -> dict:
    return dict(frame_dir=str(frame_dir), filename_tmpl='img_{:05}.jpg', modality='RGB',
                frame_inds=np.array(inds))


def test_extracted_frames_are_the_decoded_frames(frames: Path, shared_videos: Path) -> None:
    reader = decord.VideoReader(str(shared_videos / 'test.mp4'), num_threads=1)
    files = sorted((frames / 'test_mp4').glob('*.jpg'))
    assert len(files) == len(reader) == 300 and files[0].name == 'img_00001.jpg'
    for index in (0, 150, 299):
        decoded = reader[index].asnumpy()
        stored = cv2.cvtColor(cv2.imread(str(files[index])), cv2.COLOR_BGR2RGB)
        assert stored.shape == decoded.shape == (256, 340, 3)
        assert np.abs(stored.astype(int) - decoded).mean() < 2  # JPEG at quality 95
    for copy, size in ((128, (128, 170)), (64, (64, 85))):
        image = cv2.imread(str(frames / 'test_mp4' / COPY_DIR.format(copy) / 'img_00150.jpg'))
        assert image.shape[:2] == size
    assert not list(frames.glob('*.partial'))


def test_full_size_equals_rawframedecode(frames: Path) -> None:
    """short_side=None: pixel for pixel what mmaction2's RawFrameDecode gives, duplicates and offset
    included."""
    results = clip(frames / 'test_mp4', [1, 5, 5, 9])
    results['offset'] = 10
    ours = ScaledRawFrameDecode(copies=COPIES)(dict(results))
    theirs = RawFrameDecode()(dict(results))
    assert len(ours['imgs']) == 4 and ours['img_shape'] == theirs['img_shape'] == (256, 340)
    assert all(np.array_equal(a, b) for a, b in zip(ours['imgs'], theirs['imgs']))
    assert ours['imgs'][1] is not ours['imgs'][2]


@pytest.mark.parametrize('short_side, shape', [
    (256, (256, 340)), (200, (256, 340)),    # no copy covers it: full size, no reduction
    (128, (128, 170)), (100, (128, 170)),    # the 128 copy
    (64, (64, 85)), (33, (64, 85)),          # the 64 copy
    (32, (32, 43)), (8, (8, 11)),            # the 64 copy, reduced by 2 and 8 in libjpeg
])
def test_reads_the_smallest_copy_that_covers_the_need(frames: Path, short_side: int,
                                                      shape: tuple[int, int]) -> None:
    decoder = ScaledRawFrameDecode(copies=COPIES, short_side=short_side)
    out = decoder(clip(frames / 'test_mp4', [3, 4]))
    assert out['img_shape'] == shape and min(shape) >= short_side


def test_reduction_without_copies(frames: Path) -> None:
    out = ScaledRawFrameDecode(short_side=100)(clip(frames / 'test_mp4', [3]))
    assert out['img_shape'] == (128, 170)
    out = ScaledRawFrameDecode(short_side=100, reduced_decode=False)(clip(frames / 'test_mp4', [3]))
    assert out['img_shape'] == (256, 340)


def test_needed_short_side_follows_the_crop() -> None:
    base = describe_pipeline(TRAIN)
    assert [needed_short_side(TRAIN, base, s) for s in (224, 158, 112)] == [256, 181, 128]
    absolute = TRAIN[:3] + [dict(type='RandomCrop', size=224)] + TRAIN[5:]
    assert needed_short_side(absolute, describe_pipeline(absolute), 112) == 256
    jitter = TRAIN[:2] + [dict(type='RandomRescale', scale_range=(256, 320))] + TRAIN[3:]
    assert needed_short_side(jitter, describe_pipeline(jitter), 112) == 160
    no_resize = TRAIN[:2] + TRAIN[3:]
    assert needed_short_side(no_resize, describe_pipeline(no_resize), 112) is None


def test_each_grid_shape_decodes_and_resizes_what_it_needs(frames: Path) -> None:
    pipeline = ShapeVaryingPipeline(TRAIN)
    for crop, short_side in ((224, 256), (158, 181), (112, 128), (79, 91)):
        decoder, resize = pipeline.pipeline(4, 2, crop).transforms[1:3]
        assert isinstance(decoder, ScaledRawFrameDecode) and decoder.short_side == short_side
        assert decoder.copies == COPIES and resize.scale == (np.inf, short_side)
    # an absolute crop between the resize and the final resize keeps the resize as written
    absolute = TRAIN[:3] + [dict(type='CenterCrop', crop_size=200)] + TRAIN[4:]
    decoder, resize = ShapeVaryingPipeline(absolute).pipeline(4, 2, 112).transforms[1:3]
    assert decoder.short_side == 128 and resize.scale == (np.inf, 256)
    # video pipelines are left as written
    video = [dict(type='DecordInit')] + TRAIN[:1] + [dict(type='DecordDecode')] + TRAIN[2:]
    assert ShapeVaryingPipeline(video).pipeline(4, 2, 112).transforms[3].scale == (np.inf, 256)


@pytest.mark.parametrize('short_side', [256, 181, 128, 91, 64, 40])
def test_equals_ordinary_decoding_up_to_resampling(frames: Path, short_side: int) -> None:
    """Frames read from a copy (and reduced by libjpeg) then resized to the short side a shape needs
    equal the full frames resized there, up to resampling: a few grey levels apart."""
    resize = TRANSFORMS.build(dict(type='Resize', scale=(-1, short_side), interpolation='area'))
    for frame_dir in ('test_mp4', 'test_avi'):
        results = clip(frames / frame_dir, [1, 40, 80, 120])
        ordinary = resize(RawFrameDecode()(dict(results)))['imgs']
        scaled = resize(ScaledRawFrameDecode(copies=COPIES, short_side=short_side)(dict(results)))[
            'imgs']
        for a, b in zip(ordinary, scaled):
            assert min(a.shape[:2]) == min(b.shape[:2]) == short_side
            assert abs(a.shape[1] - b.shape[1]) <= 1  # the long side rounds from another size
            b = cv2.resize(b, a.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            assert psnr(a, b) > 30


@pytest.mark.parametrize('crop_size', [224, 158, 112, 56])
def test_same_view_at_every_grid_shape(frames: Path, crop_size: int) -> None:
    """The same draws through ShapeVaryingPipeline with ScaledRawFrameDecode (frames decoded and
    resized smaller) and with RawFrameDecode crop the same part of the frame, up to the crop's pixel
    rounding, and give close clips. The crop is I3D's ``MultiScaleCrop``, whose offsets are fractions
    of the frame (``RandomResizedCrop`` draws them in pixels: another crop, from the same
    distribution)."""
    train = TRAIN[:3] + [I3D_CROP, TRAIN[4]]  # up to the final resize
    outputs = []
    for decoder in (dict(type='RawFrameDecode'), TRAIN[1]):
        np.random.seed(3)
        random.seed(3)
        pipeline = ShapeVaryingPipeline(train[:1] + [decoder] + train[2:])
        results = pipeline.transform(dict(
            frame_dir=str(frames / 'test_mp4'), total_frames=300, label=0, start_index=1,
            modality='RGB', filename_tmpl='img_{:05}.jpg', sample_idx=GridIndex(0, GridShape(
                8, 4, crop_size))))
        short = pipeline.pipeline(*results['grid_shape']).transforms[2].scale[1]  # the first resize
        resized = np.array([round(340 * short / 256), short] * 2)  # test_mp4 is 340x256
        outputs.append((results['crop_bbox'] / resized, np.stack(results['imgs'])))
    (box_full, clip_full), (box_scaled, clip_scaled) = outputs
    assert clip_full.shape == clip_scaled.shape == (4, crop_size, crop_size, 3)
    assert np.abs(box_full - box_scaled).max() < 0.01
    assert psnr(clip_full, clip_scaled) > 20


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float))**2 + 1e-9)))


def test_through_rawframe_dataset_and_dataloader(frames: Path, tmp_path: Path) -> None:
    """RawframeDataset + MultigridSampler + 2 persistent workers over the first long-cycle shape's short
    cycle (batches 128/64/64 at the reference, here 16/8/8): every batch at its grid shape."""
    ann = tmp_path / 'train.txt'
    ann.write_text(f'test_mp4 300 0\ntest_avi {AVI_FRAMES} 1\n' * 16)  # 32 clips
    dataset = RawframeDataset(str(ann), [dict(type='ShapeVaryingPipeline', transforms=TRAIN)],
                              data_prefix=dict(img=str(frames)))
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[8], gamma=0.1), 10, 0.1)
    plan = build_plan(BaseShape(1, 16, 2, 224), MultigridOptions(), curve, 10, 1)
    sampler = MultigridSampler(DefaultSampler(dataset, shuffle=True, seed=0), 1)
    sampler.set_plan(plan)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2, persistent_workers=True,
                        collate_fn=pseudo_collate)
    segment = plan.segments[0]
    batches = list(loader)
    assert len(batches) == segment.batches_per_epoch(len(dataset)) == 3  # one short cycle
    for i, batch in enumerate(batches):
        shape = segment.shapes[i % len(segment.shapes)]
        assert len(batch['inputs']) == shape.batch_size
        assert all(x.shape == (1, 3, shape.clip_len, shape.crop_size, shape.crop_size)
                   and x.dtype == torch.uint8 for x in batch['inputs'])
        assert {d.grid_shape[2] for d in batch['data_samples']} == {shape.crop_size}


def broken_frame_dir(frames: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of test's first 40 frames (and copies) with frame 5 of the full frames damaged."""
    frame_dir = tmp_path / damage
    for source in [frames / 'test_mp4'] + [frames / 'test_mp4' / COPY_DIR.format(c) for c in COPIES]:
        target = frame_dir / source.relative_to(frames / 'test_mp4')
        target.mkdir(parents=True)
        for index in range(1, 41):
            name = f'img_{index:05d}.jpg'
            (target / name).write_bytes((source / name).read_bytes())
    victim = frame_dir / 'img_00005.jpg'
    data = victim.read_bytes()
    if damage == 'missing':
        victim.unlink()
    elif damage == 'truncated':
        victim.write_bytes(data[:len(data) // 2])
    elif damage == 'garbage':
        victim.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif damage == 'empty':
        victim.write_bytes(b'')
    elif damage == 'missing-copy':
        (frame_dir / COPY_DIR.format(64) / 'img_00005.jpg').unlink()
    return frame_dir


@pytest.mark.parametrize('damage, short_side, message', [
    ('missing', None, r'frame file not found: .*missing/img_00005\.jpg'),
    ('truncated', None, r'truncated/img_00005\.jpg: truncated JPEG'),
    ('garbage', None, r'garbage/img_00005\.jpg: not a decodable image'),
    ('empty', None, r'empty/img_00005\.jpg: not a decodable image \(0 bytes\)'),
    ('missing-copy', 60, r'frame file not found: .*short64/img_00005\.jpg \(copy .short64. of '
     r'ScaledRawFrameDecode\.copies=\(128, 64\): write it with tools/extract_frames\.py'),
])
def test_broken_frames_are_named(frames: Path, tmp_path: Path, damage: str, short_side: int | None,
                                 message: str) -> None:
    frame_dir = broken_frame_dir(frames, tmp_path, damage)
    decoder = ScaledRawFrameDecode(copies=COPIES, short_side=short_side)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        decoder(clip(frame_dir, [3, 5, 7]))


def test_broken_frame_through_the_pipeline(frames: Path, tmp_path: Path) -> None:
    """Under ShapeVaryingPipeline the error names the file; with skip_broken the sample is skipped."""
    frame_dir = broken_frame_dir(frames, tmp_path, 'truncated')
    results = dict(frame_dir=str(frame_dir), total_frames=40, label=0, start_index=1,
                   modality='RGB', filename_tmpl='img_{:05}.jpg', frame_inds=None)
    shape = GridShape(1, 40, 224)  # 40 frames at stride 1: frame 5 is read
    pipeline = ShapeVaryingPipeline([dict(TRAIN[0], frame_interval=1)] + TRAIN[1:])
    with pytest.raises(RuntimeError, match=r'failed to load .*truncated: ValueError: .*img_00005\.jpg: '
                       'truncated JPEG'):
        pipeline(dict(results, sample_idx=GridIndex(0, shape)))
    pipeline.skip_broken = True
    assert pipeline(dict(results, sample_idx=GridIndex(0, shape))) is None and pipeline.skipped == 1


def test_extract_dataset_annotation_and_failures(shared_videos: Path, tmp_path: Path) -> None:
    videos = tmp_path / 'videos'
    (videos / 'sub').mkdir(parents=True)
    (videos / 'sub' / 'short.mp4').write_bytes((shared_videos / 'demo_spatiotemporal_det.mp4')
                                                .read_bytes())
    (videos / 'empty.mp4').write_bytes(b'')
    data = (shared_videos / 'test.avi').read_bytes()
    (videos / 'cut.avi').write_bytes(data[:len(data) // 2])
    ann = tmp_path / 'train_list_videos.txt'
    ann.write_text('sub/short.mp4 3\nempty.mp4 1\ncut.avi 2\n')
    result = extract_dataset(ann, videos, tmp_path / 'frames', tmp_path / 'train_list.txt',
                             copies=(64,), workers=2)
    assert result.clips == 1
    assert (tmp_path / 'train_list.txt').read_text() == 'sub/short 57 3\n'
    assert len(list((tmp_path / 'frames' / 'sub' / 'short').glob('*.jpg'))) == 57
    assert len(list((tmp_path / 'frames' / 'sub' / 'short' / 'short64').glob('*.jpg'))) == 57
    failures = dict(result.failures)
    assert set(failures) == {'empty.mp4', 'cut.avi'}
    assert 'empty.mp4: ValueError: the file is empty' in failures['empty.mp4']
    assert 'cut.avi: ValueError: truncated' in failures['cut.avi']
    assert not (tmp_path / 'frames' / 'empty').exists() and not list(
        (tmp_path / 'frames').glob('*.partial'))
    dataset = RawframeDataset(str(result.ann_file), [], data_prefix=dict(img=str(result.frames_root)))
    assert dataset.get_data_info(0)['total_frames'] == 57


def test_videos_sharing_a_frame_folder_are_refused(tmp_path: Path) -> None:
    ann = tmp_path / 'list.txt'
    ann.write_text('a/clip.mp4 0\na/clip.avi 1\n')
    with pytest.raises(ValueError, match='a/clip.mp4 and a/clip.avi would share the frame folder '
                       'a/clip; rename one of them'):
        extract_dataset(ann, tmp_path, tmp_path / 'frames', tmp_path / 'out.txt')


def test_copies_for_the_shipped_configs() -> None:
    kinetics = REPO / 'configs' / 'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_multigrid.py'
    assert copies_for_config(Config.fromfile(kinetics)) == (181, 128)
    synthetic = REPO / 'configs' / 'synthetic_r3d_multigrid.py'
    assert copies_for_config(Config.fromfile(synthetic)) == (57, 40)


def test_tool_with_config(shared_videos: Path, tmp_path: Path) -> None:
    ann = tmp_path / 'list.txt'
    ann.write_text('demo_spatiotemporal_det.mp4 0\n')
    config = REPO / 'configs' / 'synthetic_r3d_multigrid.py'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'extract_frames.py'), str(ann),
                           str(shared_videos), str(tmp_path / 'frames'), '--config', str(config),
                           '--workers', '1'], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dict(type='ScaledRawFrameDecode', copies=(57, 40))" in proc.stdout
    frame_dir = tmp_path / 'frames' / 'demo_spatiotemporal_det'
    assert sorted(p.name for p in frame_dir.iterdir() if p.is_dir()) == ['short40', 'short57']
    assert (tmp_path / 'frames' / 'list.txt').read_text() == 'demo_spatiotemporal_det 57 0\n'
    ann.write_text('missing.mp4 0\n')
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'extract_frames.py'), str(ann),
                           str(shared_videos), str(tmp_path / 'frames2'), '--copies', '64', '64'],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and 'copies holds a short side twice' in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'extract_frames.py'), str(ann),
                           str(shared_videos), str(tmp_path / 'frames2')],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and 'failed: missing.mp4' in proc.stderr


def test_repr_and_bad_arguments() -> None:
    assert repr(ScaledRawFrameDecode(copies=(64, 128), short_side=100)) == (
        'ScaledRawFrameDecode(copies=(128, 64), short_side=100, reduced_decode=True, '
        'backend_args=None)')
    with pytest.raises(ValueError, match=r'ScaledRawFrameDecode.copies must hold positive ints'):
        ScaledRawFrameDecode(copies=(0,))
    with pytest.raises(ValueError, match=r'ScaledRawFrameDecode.short_side must be a positive int'):
        ScaledRawFrameDecode(short_side=0)
    with pytest.raises(ValueError, match='modality=.Flow.: use RawFrameDecode'):
        ScaledRawFrameDecode()(dict(clip(Path('x'), [1]), modality='Flow'))
