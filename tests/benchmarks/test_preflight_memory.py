"""benchmarks/preflight_memory.py's CUDA branch, with the GPU check replaced by a stand-in on CPU."""
from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from mmengine.logging import print_log

from mmmultigrid.plan import MultigridPlan
from mmmultigrid.engine.preflight import PreflightError
from runs import REPO


@pytest.fixture
def preflight_memory(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / 'benchmarks'))
    monkeypatch.delitem(sys.modules, 'preflight_memory', raising=False)
    import preflight_memory
    monkeypatch.setattr(preflight_memory, 'build_model',  # the check_memory stand-ins ignore it
                        lambda config, device, amp: (torch.nn.Sequential(), None, 4))
    return preflight_memory


def gpu_with_room_for(batch: int, error: str = 'runs out of GPU memory (...); lower '
                      'train_dataloader.batch_size or the long-cycle factors') -> Callable[..., None]:
    """A check_memory stand-in: logs like the real one up to ``batch`` clips, then fails with ``error``."""
    def check_memory(runner, plan: MultigridPlan) -> None:
        largest = max(g.batch_size for s in plan.segments for g in s.shapes)
        if largest > batch:
            raise PreflightError(f'grid shape (batch {largest}, ...) {error}')
        print_log(f'preflight: batch {largest} fits', logger='current')
    return check_memory


def test_batch_is_doubled_until_the_named_out_of_memory_error(preflight_memory: ModuleType,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight_memory, 'check_memory', gpu_with_room_for(600))
    result = preflight_memory.check_model('i3d', torch.device('cuda'), False, 32)
    assert result['ok']  # largest per-GPU batch: 128 at 1x, so 512 fits and 1024 does not
    assert result['fits']['1x'] == ['preflight: batch 128 fits']
    assert list(result['fits']) == ['ok', '1x', '2x', '4x']
    assert result['too_large']['factor'] == 8 and result['too_large']['batch_size'] == 64


@pytest.mark.parametrize('room, error', [(10**6, None), (600, 'fails in a forward/backward: ...')])
def test_no_error_or_another_error_is_a_failure(preflight_memory: ModuleType,
                                                monkeypatch: pytest.MonkeyPatch, room: int,
                                                error: str | None) -> None:
    monkeypatch.setattr(preflight_memory, 'check_memory', gpu_with_room_for(room, error or ''))
    result = preflight_memory.check_model('slowfast', torch.device('cuda'), False, 8)
    assert not result['ok'] and not result['too_large']['ok']
    if error is None:
        assert result['too_large']['error'] == 'no PreflightError up to 8x the batch'
