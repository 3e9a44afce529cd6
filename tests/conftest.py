"""Shared pytest fixtures."""
from pathlib import Path

import pytest

from mmmultigrid.synthetic_videos import SyntheticDataset, make_dataset

SMALL_DATASET = dict(num_classes=4, train_clips_per_class=6, val_clips_per_class=2,
                     num_frames=32, width=96, height=72, seed=0)


@pytest.fixture(scope='session')
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """A small synthetic dataset (4 classes, 6 train + 2 val clips each, 32 frames of 96x72)."""
    return make_dataset(tmp_path_factory.mktemp('synthetic'), **SMALL_DATASET)


@pytest.fixture(scope='session')
def shared_videos() -> Path:
    """The sample videos in ``<repo>/../shared/videos``; skips the test where they are missing."""
    path = Path(__file__).resolve().parents[1].parent / 'shared' / 'videos'
    if not path.is_dir():
        pytest.skip(f'shared videos not found at {path}')
    return path


@pytest.fixture(scope='session')
def two_rank_dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """64 training clips: 32 per rank fill one short cycle of batch-1 multigrid on 2 processes."""
    return make_dataset(tmp_path_factory.mktemp('synthetic64'),
                        **{**SMALL_DATASET, 'train_clips_per_class': 16})
