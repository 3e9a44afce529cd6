"""The baseline's learning-rate curve, in pure Python.

mmengine's LR schedulers are chainable (each multiplies the current LR), and iteration-converted ones are
built with the first loader's epoch length. Multigrid changes the epoch length every long cycle, so the
plan evaluates the baseline's curve in closed form instead: :meth:`LRCurve.factor` gives the LR, relative to
the optimizer's LR, at a (fractional) baseline epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

INF = float('inf')

#: LR scheduler types the plan can follow, by mmengine registry name.
SUPPORTED_LR_SCHEDULERS = ('LinearLR', 'ConstantLR', 'MultiStepLR', 'StepLR', 'ExponentialLR',
                           'CosineAnnealingLR', 'PolyLR')
#: Schedulers that only shape the start of training; the plan stretches them by iteration fraction.
WARMUP_SCHEDULERS = ('LinearLR', 'ConstantLR')
STEP_SCHEDULERS = ('MultiStepLR', 'StepLR')


@dataclass(frozen=True)
class SchedulerTerm:
    """One LR scheduler of the baseline, in epochs.

    ``continuous`` is True for ``convert_to_iter_based=True`` (updated every iteration) and False for
    plain epoch-based schedulers (updated at whole epochs).
    """

    type: str
    begin: float
    end: float
    continuous: bool
    args: Mapping[str, Any]

    def apply(self, factor: float, epoch: float) -> float:
        """The LR factor after this scheduler, given the factor before it at ``epoch``."""
        if epoch < self.begin:
            return factor
        t = min(epoch, self.end) - self.begin
        if not self.continuous:
            t = math.floor(t)
        a = self.args
        if self.type == 'LinearLR':
            start, stop = a.get('start_factor', 1 / 3), a.get('end_factor', 1.0)
            span = self._span()
            return factor * (start + (stop - start) * min(t / span, 1.0) if span > 0 else stop)
        if self.type == 'ConstantLR':
            return factor * (a.get('factor', 1 / 3) if t < self._span() else 1.0)
        if self.type == 'MultiStepLR':
            passed = sum(1 for m in a['milestones'] if t >= m)
            return factor * a.get('gamma', 0.1)**passed
        if self.type == 'StepLR':
            return factor * a.get('gamma', 0.1)**math.floor(t / a['step_size'])
        if self.type == 'ExponentialLR':
            return factor * a['gamma']**t
        if self.type == 'PolyLR':
            eta_min = a.get('eta_min', 0.0) / a['base_lr']
            span = self.end - self.begin
            return eta_min + (factor - eta_min) * (1 - min(t / span, 1.0))**a.get('power', 1.0)
        # CosineAnnealingLR
        t_max = a.get('T_max') or (self.end - self.begin)
        if a.get('eta_min_ratio') is not None:
            eta_min = factor * a['eta_min_ratio']
        else:
            eta_min = (a.get('eta_min') or 0.0) / a['base_lr']
        return eta_min + (factor - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2

    def _span(self) -> float:
        # mmengine counts `end - begin - 1` steps; a continuous (per-iteration) scheduler has so many
        # steps per epoch that the curve spans the whole interval.
        return self.end - self.begin if self.continuous else self.end - self.begin - 1


@dataclass(frozen=True)
class LRCurve:
    """The product of the baseline's LR schedulers, as a function of the baseline epoch."""

    terms: tuple[SchedulerTerm, ...]

    def factor(self, epoch: float, exclude: Sequence[str] = ()) -> float:
        """LR at ``epoch`` relative to the optimizer's LR, skipping scheduler types in ``exclude``."""
        value = 1.0
        for term in self.terms:
            if term.type not in exclude:
                value = term.apply(value, epoch)
        return value

    @property
    def step_term(self) -> SchedulerTerm | None:
        """The single step scheduler (MultiStepLR/StepLR), if the baseline has one."""
        steps = [t for t in self.terms if t.type in STEP_SCHEDULERS]
        return steps[0] if steps else None

    def has(self, types: Sequence[str]) -> bool:
        return any(t.type in types for t in self.terms)


def parse_lr_schedulers(param_scheduler: Any, max_epochs: int, base_lr: float) -> LRCurve:
    """Read an mmengine ``param_scheduler`` config (a dict or a list of dicts) into an :class:`LRCurve`.

    Momentum and other non-LR schedulers are left to mmengine and skipped here. Raises ``ValueError``
    for an LR scheduler the plan cannot honour, naming it and the config key.
    """
    if param_scheduler is None:
        return LRCurve(())
    if isinstance(param_scheduler, Mapping):
        param_scheduler = [param_scheduler]
    terms = []
    for i, cfg in enumerate(param_scheduler):
        key = f'param_scheduler[{i}]'
        kind = cfg.get('type')
        if not isinstance(kind, str):
            raise TypeError(f'{key}.type must be a registry name string, got {kind!r}')
        if not _is_lr_scheduler(kind, cfg):
            continue
        if kind not in SUPPORTED_LR_SCHEDULERS:
            raise ValueError(f'{key}: LR scheduler {kind!r} is not supported by the multigrid plan; '
                             f'use one of {", ".join(SUPPORTED_LR_SCHEDULERS)}')
        if not cfg.get('by_epoch', True):
            raise ValueError(f'{key} ({kind}) has by_epoch=False: the multigrid plan needs epoch-based '
                             'LR schedulers (use by_epoch=True, with convert_to_iter_based=True for '
                             'per-iteration updates), since the epoch length changes with the grid')
        begin = float(cfg.get('begin', 0))
        end = float(min(cfg.get('end', INF), max_epochs))
        if begin >= end:
            raise ValueError(f'{key} ({kind}): begin={begin:g} must be below end={end:g} '
                             f'(train_cfg.max_epochs={max_epochs})')
        if kind == 'StepLR' and not cfg.get('step_size', 0) > 0:
            raise ValueError(f'{key}.step_size must be positive, got {cfg.get("step_size")!r}')
        if kind == 'MultiStepLR' and not cfg.get('milestones'):
            raise ValueError(f'{key}.milestones must be a non-empty list, got {cfg.get("milestones")!r}')
        args = {k: v for k, v in cfg.items()
                if k not in ('type', 'begin', 'end', 'by_epoch', 'convert_to_iter_based')}
        args['base_lr'] = base_lr
        terms.append(SchedulerTerm(kind, begin, end, bool(cfg.get('convert_to_iter_based', False)),
                                   args))
    if sum(t.type in STEP_SCHEDULERS for t in terms) > 1:
        raise ValueError('param_scheduler has more than one MultiStepLR/StepLR: merge their milestones '
                         'into one MultiStepLR for the multigrid plan')
    curve = LRCurve(tuple(terms))
    decays = [t.type for t in terms if t.type not in WARMUP_SCHEDULERS]
    if curve.step_term is not None and len(decays) > 1:
        raise ValueError(f'param_scheduler combines a step schedule with {decays}: the multigrid plan '
                         'follows either a step schedule (stages from its milestones) or a smooth one, '
                         'each with optional LinearLR/ConstantLR warmup')
    return curve


def _is_lr_scheduler(kind: str, cfg: Mapping[str, Any]) -> bool:
    if kind.endswith('ParamScheduler'):
        return cfg.get('param_name') == 'lr'
    return not kind.endswith(('Momentum', 'MomentumScheduler'))


def step_milestones(term: SchedulerTerm, max_epochs: int) -> list[int]:
    """Absolute epochs at which a MultiStepLR/StepLR term lowers the LR, below ``max_epochs``."""
    if term.type == 'MultiStepLR':
        rel = sorted(term.args['milestones'])
    else:
        step = term.args['step_size']
        rel = [step * k for k in range(1, int((term.end - term.begin) // step) + 1)]
    return [int(term.begin + m) for m in rel if 0 < term.begin + m < min(term.end, max_epochs)]
