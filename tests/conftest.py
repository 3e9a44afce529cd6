"""Shared pytest fixtures. The test folders mirror the package's; their modules import each other's
helpers by module name, so every folder is on ``sys.path``."""
import sys
from pathlib import Path

import pytest
import torch

from mmmultigrid.data.synthetic_videos import SyntheticDataset, make_dataset

for folder in sorted(p for p in Path(__file__).resolve().parent.rglob('*') if p.is_dir()
                     and not p.name.startswith(('.', '__'))):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

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


@pytest.fixture
def cpu_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets mmengine's ``AmpOptimWrapper`` train with bfloat16 autocast on CPU.

    mmengine 0.10.7 asserts a GPU in its constructor; the rest of it works on CPU: its ``GradScaler``
    disables itself without CUDA (bfloat16 needs no loss scaling) and its autocast takes the CPU.
    oneDNN is turned off: with torch 2.13 on this machine's CPU, its bfloat16 Conv3d gives non-finite
    weight gradients at random (2 runs in 6 of one tiny R3D step) and corrupts the heap where a strided
    convolution's output is one pixel wide (pytorch/pytorch#169688); torch's own kernels do neither.
    """
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, 'enabled', False)
