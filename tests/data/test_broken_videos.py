"""Broken videos through a real VideoDataset, MultigridSampler and DataLoader worker.

Corrupted copies of the shared clips (in tmp): truncated to half, zero bytes, random bytes, container
header without the frames, a valid container holding no frame. Without ``skip_broken`` the error names
the file; with it, batches still come out complete at the planned shape, from good files only, and
every skip is logged with a count. The loader has a timeout, so a hang fails the test instead of
stalling it; a decoder crash (SIGSEGV) in the worker fails it too.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from mmaction.datasets import VideoDataset
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import check_container
from mmmultigrid.plan import BaseShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.data.sampler import MultigridSampler

GOOD = ('demo.mp4', 'test.mp4', 'demo_spatiotemporal_det.mp4', 'test.avi')
TRANSFORMS = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs', meta_keys=('filename', 'grid_shape')),
]
LOADER_TIMEOUT_S = 60


def mp4_boxes(data: bytes) -> dict[bytes, bytes]:
    """The top-level boxes of an MP4 file, by type."""
    boxes, pos = {}, 0
    while pos < len(data):
        size, kind = struct.unpack('>I4s', data[pos:pos + 8])
        boxes[kind] = data[pos:pos + size]
        pos += size
    return boxes


def header_only_mp4(videos: Path) -> bytes:
    """demo.mp4 without its frames: ftyp + moov (the index), no mdat."""
    boxes = mp4_boxes((videos / 'demo.mp4').read_bytes())
    assert boxes[b'moov'] and boxes[b'mdat']
    return boxes[b'ftyp'] + boxes[b'moov']


def header_only_avi(videos: Path) -> bytes:
    """test.avi up to the start of its frame list (RIFF + hdrl + the 'movi' tag)."""
    data = (videos / 'test.avi').read_bytes()
    return data[:data.index(b'movi') + 4]


def no_frames(path: Path) -> None:
    """A valid MP4 container that holds no frame."""
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25, (64, 48)).release()
    assert path.stat().st_size > 0


def half(videos: Path, name: str) -> bytes:
    data = (videos / name).read_bytes()
    return data[:len(data) // 2]


BROKEN: dict[str, Callable[[Path, Path], None]] = {
    'truncated.mp4': lambda v, p: p.write_bytes(half(v, 'demo.mp4')),
    # decord 0.6.0 crashes (SIGSEGV) opening this from memory, as DecordInit does
    'truncated.avi': lambda v, p: p.write_bytes(half(v, 'test.avi')),
    'empty.mp4': lambda v, p: p.write_bytes(b''),
    'garbage.mp4': lambda v, p: p.write_bytes(np.random.default_rng(0).bytes(65536)),
    'header_only.mp4': lambda v, p: p.write_bytes(header_only_mp4(v)),
    'header_only.avi': lambda v, p: p.write_bytes(header_only_avi(v)),
    'no_frames.mp4': lambda v, p: no_frames(p),
}


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


@pytest.fixture(scope='module')
def clips(tmp_path_factory: pytest.TempPathFactory, shared_videos: Path) -> Path:
    """The good shared clips and one broken file of each kind, in one folder."""
    root = tmp_path_factory.mktemp('broken_videos')
    for name in GOOD:
        (root / name).write_bytes((shared_videos / name).read_bytes())
    for name, make in BROKEN.items():
        make(shared_videos, root / name)
    return root


def plan() -> MultigridPlan:
    """Base shape B=1, T=8, S=32; its first segment's batches are 16, 8 and 8 clips of 2 frames."""
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[4, 7]), 10, 0.1)
    return build_plan(BaseShape(1, 8, 2, 32), MultigridOptions(), curve, 10)


def loader(root: Path, names: list[str], skip_broken: bool, **dataset_args) -> DataLoader:
    """One worker, files in list order (no shuffle), batches of the plan's first segment."""
    ann = root / f'list_{len(names)}_{skip_broken}.txt'
    ann.write_text(''.join(f'{name} 0\n' for name in names))
    dataset = VideoDataset(str(ann), [dict(type='ShapeVaryingPipeline', transforms=TRANSFORMS,
                                           skip_broken=skip_broken)],
                           data_prefix=dict(video=str(root)), **dataset_args)
    batch_sampler = MultigridSampler(DefaultSampler(dataset, shuffle=False), 1)
    batch_sampler.set_plan(plan())
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=1, collate_fn=pseudo_collate,
                      timeout=LOADER_TIMEOUT_S)


def first_batch_error(batches: DataLoader, error: type[Exception]) -> str:
    """The message of the ``error`` that loading the first batch raises."""
    iterator = iter(batches)
    try:
        next(iterator)
    except error as raised:
        return str(raised)
    finally:  # now: left to garbage collection, a worker that raised costs a 5 s join timeout
        iterator._shutdown_workers()
    pytest.fail('the first batch loaded')


@pytest.mark.parametrize('name', list(BROKEN))
def test_error_names_the_file(name: str, clips: Path) -> None:
    message = first_batch_error(loader(clips, [name] + list(GOOD) * 4, skip_broken=False),
                                RuntimeError)
    assert f'failed to load {clips / name}: ' in message
    assert 'ShapeVaryingPipeline.skip_broken=True' in message


@pytest.mark.parametrize('name, message', [
    ('truncated.mp4', "truncated: its 'mdat' box ends at byte"),
    ('truncated.avi', 'truncated: its RIFF header declares 294566 bytes'),
    ('header_only.avi', 'truncated: its RIFF header declares 294566 bytes, the file has'),
    ('empty.mp4', 'the file is empty (0 bytes)'),
])
def test_truncation_is_caught_before_decoding(name: str, message: str, clips: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_container(str(clips / name))


def test_good_and_undetectable_files_pass_the_container_check(clips: Path) -> None:
    """Broken files with a consistent container are left to the decoder, which raises."""
    for name in GOOD + ('garbage.mp4', 'header_only.mp4', 'no_frames.mp4'):
        check_container(str(clips / name))
    check_container(str(clips / 'not_a_local_file.mp4'))  # e.g. a remote backend's path


def test_skip_broken_keeps_batches_complete_and_logs(clips: Path, tmp_path: Path) -> None:
    """The seven broken files fall in the first batch: each is skipped, logged and replaced."""
    log_file = tmp_path / 'skips.log'
    MMLogger.get_instance('test_broken_videos', log_file=str(log_file))  # the worker's 'current'
    names = list(BROKEN) + list(GOOD) * 7  # 7 broken + 28 good clips: batches of 16, 8 and 8
    segment = plan().segments[0]
    batches = list(loader(clips, names, skip_broken=True))
    assert len(batches) == segment.batches_per_epoch(len(names)) == len(segment.shapes) == 3
    for batch, shape in zip(batches, segment.shapes):
        assert len(batch['inputs']) == shape.batch_size
        for inputs, sample in zip(batch['inputs'], batch['data_samples']):
            assert inputs.shape == (1, 3, shape.clip_len, shape.crop_size, shape.crop_size)
            assert Path(sample.filename).name in GOOD
            assert sample.grid_shape[0::2] == (shape.clip_len, shape.crop_size)
    skips = re.findall(r'skipped broken sample (\S+) .*; (\d+) skipped so far in this worker',
                       log_file.read_text())
    assert {Path(path).name for path, _ in skips} == set(BROKEN)
    assert [int(count) for _, count in skips] == list(range(1, len(skips) + 1))


def test_all_broken_with_skip_broken_ends_with_an_error(clips: Path) -> None:
    """Skipping cannot loop for ever: mmengine stops after max_refetch replacements."""
    batches = loader(clips, list(BROKEN) * 3, skip_broken=True, max_refetch=20)
    assert 'Cannot find valid image after 20!' in first_batch_error(batches, Exception)
