"""Tests of the built-in synthetic video dataset (mmmultigrid.data.synthetic_videos)."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest

import mmaction.datasets  # noqa: F401  (registers the transforms)
from mmaction.registry import TRANSFORMS
from mmmultigrid.data.synthetic_videos import (SyntheticDataset, class_names, main,
                                          make_dataset)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = dict(num_classes=2, train_clips_per_class=2, val_clips_per_class=1, num_frames=16,
            width=64, height=48)


def read_annotations(ann: Path) -> list[tuple[str, int]]:
    """(relative path, label) per line of a VideoDataset annotation file."""
    entries = []
    for line in ann.read_text().splitlines():
        path, label = line.split(' ')
        entries.append((path, int(label)))
    return entries


def decode_all(dataset: SyntheticDataset) -> list[np.ndarray]:
    """Every frame of every clip, train then val, as (T, H, W, 3) arrays."""
    clips = []
    for ann in (dataset.train_ann, dataset.val_ann):
        for path, _ in read_annotations(ann):
            reader = decord.VideoReader(str(dataset.video_dir / path))
            clips.append(reader.get_batch(range(len(reader))).asnumpy())
    return clips


def decode_with_mmaction(filename: Path) -> dict:
    """Run DecordInit -> SampleFrames(8, 2, 1) -> DecordDecode (test mode) on one video."""
    pipeline = [TRANSFORMS.build(cfg) for cfg in (
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1, test_mode=True),
        dict(type='DecordDecode'))]
    results = dict(filename=str(filename), start_index=0, modality='RGB')
    for transform in pipeline:
        results = transform(results)
    return results


def test_annotation_format_and_labels(synthetic_dataset: SyntheticDataset) -> None:
    ds = synthetic_dataset
    assert ds.video_dir == ds.root / 'videos'
    for ann, split, per_class in ((ds.train_ann, 'train', 6), (ds.val_ann, 'val', 2)):
        lines = ann.read_text().splitlines()
        assert all(len(line.split(' ')) == 2 for line in lines)
        entries = read_annotations(ann)
        assert all(path.startswith(f'{split}/') and path.endswith('.mp4') for path, _ in entries)
        assert all((ds.video_dir / path).is_file() for path, _ in entries)
        assert len({path for path, _ in entries}) == len(entries)
        assert Counter(label for _, label in entries) == {k: per_class for k in range(4)}
    assert class_names(4) == ['disc_right', 'disc_left', 'square_right', 'square_left']
    assert len(set(class_names(16))) == 16


def test_every_clip_decodes_through_mmaction(synthetic_dataset: SyntheticDataset) -> None:
    ds = synthetic_dataset
    for ann in (ds.train_ann, ds.val_ann):
        for path, _ in read_annotations(ann):
            results = decode_with_mmaction(ds.video_dir / path)
            assert results['total_frames'] == 32
            assert len(results['imgs']) == 8
            assert all(img.shape == (72, 96, 3) and img.dtype == np.uint8
                       for img in results['imgs'])


def test_deterministic_by_seed(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / 'a', seed=3, **TINY)
    second = make_dataset(tmp_path / 'b', seed=3, **TINY)
    other = make_dataset(tmp_path / 'c', seed=4, **TINY)
    for ann in ('train_ann', 'val_ann'):
        assert getattr(first, ann).read_bytes() == getattr(second, ann).read_bytes()
    first_clips, second_clips = decode_all(first), decode_all(second)
    assert all(np.array_equal(a, b) for a, b in zip(first_clips, second_clips, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first_clips, decode_all(other)))


def test_reuses_existing_dataset(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, **TINY)
    video = dataset.video_dir / read_annotations(dataset.train_ann)[0][0]
    stamps = (video.stat().st_mtime_ns, (tmp_path / 'meta.json').stat().st_mtime_ns)

    assert make_dataset(tmp_path, **TINY) == dataset
    assert (video.stat().st_mtime_ns, (tmp_path / 'meta.json').stat().st_mtime_ns) == stamps

    changed = dict(TINY, train_clips_per_class=3)
    with pytest.raises(FileExistsError, match='overwrite'):
        make_dataset(tmp_path, **changed)
    make_dataset(tmp_path, overwrite=True, **changed)
    assert len(read_annotations(dataset.train_ann)) == 6


@pytest.mark.parametrize('name, value', [
    ('num_classes', 1), ('num_classes', 17), ('num_classes', 2.0), ('train_clips_per_class', 0),
    ('val_clips_per_class', -1), ('num_frames', 1), ('width', 30), ('width', 65),
    ('height', True), ('fps', 0), ('fps', '24'), ('seed', -1)])
def test_bad_arguments(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name) as error:
        make_dataset(tmp_path / 'never', **{**TINY, name: value})
    assert repr(value) in str(error.value)
    assert not (tmp_path / 'never').exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = main(['--out', str(tmp_path), '--num-classes', '2', '--train-clips-per-class', '2',
                    '--val-clips-per-class', '1', '--frames', '16', '--width', '64',
                    '--height', '48', '--fps', '12', '--seed', '5'])
    assert str(dataset.train_ann) in capsys.readouterr().out
    assert len(read_annotations(dataset.val_ann)) == 2
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--frames', '1'])
    assert 'num_frames' in capsys.readouterr().err


def test_tools_script() -> None:
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'tools/make_synthetic_videos.py'),
                                '--help'], capture_output=True, text=True, check=True)
    assert '--train-clips-per-class' in completed.stdout


def test_direction_needs_motion(tmp_path: Path) -> None:
    """Classes 0 and 1 (disc moving right / left) look alike frame by frame; motion separates them.

    A nearest-centroid classifier on clip colour histograms (order-free appearance) stays near
    chance, while the sign of sum(dI/dt * dI/dx) (brightness constancy: I_t = -v I_x) is accurate.
    """
    dataset = make_dataset(tmp_path, num_classes=2, train_clips_per_class=20,
                           val_clips_per_class=20, num_frames=16, width=64, height=48)
    clips = [clip.astype(np.float32) for clip in decode_all(dataset)]
    labels = np.array([label for ann in (dataset.train_ann, dataset.val_ann)
                       for _, label in read_annotations(ann)])
    is_train = np.arange(len(clips)) < 40

    histograms = np.stack([np.concatenate([np.histogram(clip[..., c], bins=8, range=(0, 256))[0]
                                           for c in range(3)]) / clip[..., 0].size
                           for clip in clips])
    centroids = np.stack([histograms[is_train & (labels == k)].mean(0) for k in (0, 1)])
    distances = ((histograms[~is_train, None] - centroids[None]) ** 2).sum(-1)
    appearance_accuracy = (distances.argmin(1) == labels[~is_train]).mean()

    motion = np.array([np.sum(np.diff(clip, axis=0) * np.gradient(clip, axis=2)[1:])
                       for clip in clips])
    motion_accuracy = ((motion < 0) == (labels == 0))[~is_train].mean()

    assert appearance_accuracy <= 0.7
    assert motion_accuracy >= 0.85


SHARED_VIDEOS = {  # name: (total frames, height, width)
    'demo.mp4': (280, 256, 340),
    'test.mp4': (300, 256, 340),
    'demo_spatiotemporal_det.mp4': (57, 256, 340),
    'test.avi': (164, 240, 320),
}


@pytest.mark.parametrize('name', sorted(SHARED_VIDEOS))
def test_shared_videos_decode(shared_videos: Path, name: str) -> None:
    path = shared_videos / name
    if not path.is_file():
        pytest.skip(f'{path} missing')
    total_frames, height, width = SHARED_VIDEOS[name]
    results = decode_with_mmaction(path)
    assert results['total_frames'] == total_frames
    assert len(results['imgs']) == 8
    assert all(img.shape == (height, width, 3) for img in results['imgs'])
    assert np.all(np.diff(results['frame_inds']) == 2)
