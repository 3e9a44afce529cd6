"""LRCurve against mmengine's real LR schedulers, and parse_lr_schedulers' errors."""
from __future__ import annotations

import re
from typing import Any, Callable

import pytest
import torch
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR, MultiStepLR

from mmmultigrid.lr_curve import parse_lr_schedulers

BASE_LR = 0.1
EPOCH_LENGTH = 500  # iterations per epoch for iteration-converted schedulers


def mmengine_epoch_start_lrs(cfgs: list[dict[str, Any]], max_epochs: int) -> list[float]:
    """LR at the start of every epoch, stepping real mmengine schedulers as ParamSchedulerHook does.

    Converted (``convert_to_iter_based=True``) schedulers step after every iteration, the others
    after every epoch, each group in config order.
    """
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    classes: dict[str, Callable] = dict(LinearLR=LinearLR, CosineAnnealingLR=CosineAnnealingLR,
                                        MultiStepLR=MultiStepLR)
    per_iter, per_epoch = [], []
    for cfg in cfgs:
        kwargs = {k: v for k, v in cfg.items() if k not in ('type', 'convert_to_iter_based')}
        cls = classes[cfg['type']]
        if cfg.get('convert_to_iter_based'):
            per_iter.append(cls.build_iter_from_epoch(optimizer, epoch_length=EPOCH_LENGTH,
                                                      **kwargs))
        else:
            per_epoch.append(cls(optimizer, **kwargs))
    lrs = []
    for _ in range(max_epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        for _ in range(EPOCH_LENGTH if per_iter else 1):
            optimizer.step()  # no gradients: only keeps torch's step-order check quiet
            for scheduler in per_iter:
                scheduler.step()
        for scheduler in per_epoch:
            scheduler.step()
    return lrs


@pytest.mark.parametrize('convert', [True, False])
@pytest.mark.parametrize('warmup_end', [5, 12])
def test_linear_warmup_and_cosine_match_mmengine(convert: bool, warmup_end: int) -> None:
    max_epochs = 40
    cfgs = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=warmup_end,
                 convert_to_iter_based=convert),
            dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0, by_epoch=True, begin=0,
                 end=max_epochs)]
    curve = parse_lr_schedulers(cfgs, max_epochs, BASE_LR)
    expected = mmengine_epoch_start_lrs(cfgs, max_epochs)
    # An iteration-converted LinearLR spans end*L - 1 steps, the curve end*L: a relative error
    # below 1 / (end * L).
    rel = 2 / (warmup_end * EPOCH_LENGTH) if convert else 1e-9
    for epoch, lr in enumerate(expected):
        assert curve.factor(epoch) * BASE_LR == pytest.approx(lr, rel=rel, abs=1e-12), epoch


def test_cosine_with_eta_min_matches_mmengine() -> None:
    max_epochs = 30
    cfgs = [dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.001, by_epoch=True, begin=0,
                 end=max_epochs)]
    curve = parse_lr_schedulers(cfgs, max_epochs, BASE_LR)
    for epoch, lr in enumerate(mmengine_epoch_start_lrs(cfgs, max_epochs)):
        assert curve.factor(epoch) * BASE_LR == pytest.approx(lr, rel=1e-9), epoch


@pytest.mark.parametrize('convert', [True, False])
def test_linear_warmup_and_multistep_match_mmengine(convert: bool) -> None:
    max_epochs = 60
    cfgs = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=8,
                 convert_to_iter_based=convert),
            dict(type='MultiStepLR', milestones=[20, 35, 50], gamma=0.1, by_epoch=True, begin=0,
                 end=max_epochs)]
    curve = parse_lr_schedulers(cfgs, max_epochs, BASE_LR)
    rel = 2 / (8 * EPOCH_LENGTH) if convert else 1e-9
    for epoch, lr in enumerate(mmengine_epoch_start_lrs(cfgs, max_epochs)):
        assert curve.factor(epoch) * BASE_LR == pytest.approx(lr, rel=rel, abs=1e-12), epoch


def test_exclude_skips_scheduler_types() -> None:
    cfgs = [dict(type='LinearLR', start_factor=0.1, begin=0, end=10, convert_to_iter_based=True),
            dict(type='MultiStepLR', milestones=[20], gamma=0.1, begin=0, end=30)]
    curve = parse_lr_schedulers(cfgs, 30, BASE_LR)
    assert curve.factor(0) == pytest.approx(0.1)
    assert curve.factor(0, exclude=('LinearLR',)) == 1.0
    assert curve.factor(25, exclude=('MultiStepLR',)) == 1.0
    assert curve.factor(25) == pytest.approx(0.1)
    assert curve.step_term is not None and curve.step_term.type == 'MultiStepLR'


def test_momentum_schedulers_are_skipped() -> None:
    curve = parse_lr_schedulers([dict(type='CosineAnnealingMomentum', T_max=10),
                                 dict(type='MultiStepLR', milestones=[5])], 10, BASE_LR)
    assert [t.type for t in curve.terms] == ['MultiStepLR']


def test_no_scheduler_is_constant() -> None:
    curve = parse_lr_schedulers(None, 10, BASE_LR)
    assert curve.factor(0) == curve.factor(9.5) == 1.0


@pytest.mark.parametrize('cfgs, index', [
    ([dict(type='OneCycleLR', eta_max=0.1)], 0),
    ([dict(type='LinearLR', end=5), dict(type='ReduceOnPlateauLR')], 1),
    ([dict(type='LinearLR', end=5), dict(type='MultiStepLR', milestones=[8], by_epoch=False)], 1),
    ([dict(type='CosineAnnealingLR', T_max=10, by_epoch=False)], 0),
])
def test_unsupported_schedulers_raise_naming_the_entry(cfgs: list[dict], index: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f'param_scheduler[{index}]')):
        parse_lr_schedulers(cfgs, 10, BASE_LR)


def test_two_step_schedulers_raise() -> None:
    with pytest.raises(ValueError, match='more than one'):
        parse_lr_schedulers([dict(type='MultiStepLR', milestones=[3]),
                             dict(type='StepLR', step_size=2)], 10, BASE_LR)


def test_step_and_smooth_decay_together_raise() -> None:
    with pytest.raises(ValueError, match='step schedule'):
        parse_lr_schedulers([dict(type='MultiStepLR', milestones=[3]),
                             dict(type='CosineAnnealingLR', T_max=10)], 10, BASE_LR)


def test_continuous_warmup_is_linear_in_fractional_epochs() -> None:
    curve = parse_lr_schedulers([dict(type='LinearLR', start_factor=0.2, begin=0, end=4,
                                      convert_to_iter_based=True)], 10, BASE_LR)
    for epoch in (0, 0.5, 1.25, 3.9):
        assert curve.factor(epoch) == pytest.approx(0.2 + 0.8 * epoch / 4)
    assert curve.factor(4) == curve.factor(7) == pytest.approx(1.0)
