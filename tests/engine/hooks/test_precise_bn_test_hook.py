from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from torch import nn

from mmmultigrid.engine.hooks.precise_bn_test_hook import PreciseBNTestHook


class TinyBN(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)

    def forward(self, inputs: torch.Tensor, data_samples: list | None = None,
                mode: str = 'tensor') -> dict:
        return dict(loss=self.bn(inputs).sum())


def fake_runner(model: nn.Module, batches: list[dict], train_dataloader: dict | None) -> SimpleNamespace:
    built = []

    def build_dataloader(cfg: dict) -> list[dict]:
        built.append(cfg)
        return batches

    return SimpleNamespace(model=model, cfg=Config(dict(train_dataloader=train_dataloader)),
                           build_dataloader=build_dataloader, built=built)


def test_statistics_come_from_the_first_training_batches() -> None:
    """Running mean = the mean of the first num_batches batch means; later batches are not read; the
    model's mode is unchanged."""
    model = TinyBN().eval()
    batches = [dict(inputs=torch.full((4, 2), float(i)) + torch.randn(4, 2)) for i in range(5)]
    runner = fake_runner(model, batches, dict(batch_size=4))
    PreciseBNTestHook(num_batches=3).before_test(runner)
    expected = torch.stack([b['inputs'].mean(0) for b in batches[:3]]).mean(0)
    assert torch.allclose(model.bn.running_mean, expected, atol=1e-6)
    assert runner.built == [dict(batch_size=4)] and not model.training


@pytest.mark.parametrize('value', [0, -1, True, 2.0])
def test_bad_num_batches(value: object) -> None:
    with pytest.raises(ValueError, match=f'PreciseBNTestHook.num_batches must be an int >= 1, got {value!r}'):
        PreciseBNTestHook(num_batches=value)


def test_a_config_without_training_data_is_refused() -> None:
    with pytest.raises(ValueError, match='needs train_dataloader'):
        PreciseBNTestHook().before_test(fake_runner(TinyBN(), [], None))


def test_repr_shows_the_argument() -> None:
    assert repr(PreciseBNTestHook(8)) == 'PreciseBNTestHook(num_batches=8)'


def test_a_config_entry_builds_it() -> None:
    """custom_hooks=[dict(type='PreciseBNTestHook', ...)] in an mmaction2 config (what the shape probe
    writes) finds it in mmaction2's hook registry."""
    from mmaction.registry import HOOKS
    assert repr(HOOKS.build(dict(type='PreciseBNTestHook', num_batches=4))) == \
        'PreciseBNTestHook(num_batches=4)'
