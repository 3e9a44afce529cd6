"""Shape probes: does a grid shape teach the user's data? (``tools/shape_probe.py``)

Multigrid spends its early epochs at coarse grid shapes (few frames, small crops). On data where a
coarse shape carries little of what separates the classes (motion over few, widely spaced frames), the
model learns little there and the run reaches the baseline's accuracy only in its last, base-shape phase.
A probe tells before the long run: it trains the config as the plain baseline, at one long-cycle shape
(T, S) of the plan and otherwise unchanged (the base batch and LR, a short schedule), and validates at
that shape; the probes of all long-cycle shapes, the base shape's included, are compared epoch by epoch.
Each probe's final weights are then validated at the base shape (``transfer_config``): a shape whose
weights keep less than ``min_share`` of their own top-1 there teaches something the base shape cannot
use, and :func:`format_advice` names the long cycle without it.

Each probe config is the user's config with:

* the multigrid lines undone (``MultigridSampler``, ``MultigridHook``, ``ShapeVaryingPipeline``);
* the train pipeline retargeted to (T, S) as ``ShapeVaryingPipeline`` does, at the longest frame
  interval that shape takes (a clip spans the base clip's time); the val pipeline takes T frames at
  that span and resamples its base view to S;
* ``max_epochs`` = the probe's epochs, a linear warmup over the first sixth and the LR divided by 10 at
  2/3 and 5/6 of them (``param_scheduler`` replaced), validation at each quarter.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmengine.config import Config

from mmmultigrid.baseline import train_transforms
from mmmultigrid.data.pipeline import (PipelineShape, describe_pipeline, shaped_transforms,
                                      span_interval, transform_name)
from mmmultigrid.engine.run_scalars import latest_scalars
from mmmultigrid.plan import MultigridPlan, long_cycle_shape

MULTIGRID_ENTRIES = ('MultigridHook', 'MultigridSampler')
# On the synthetic motion task (docs/choosing_the_grid.md) the T/4 probe kept 35% of its top-1 at the
# base shape and the T/2 probes 85-89%; the long cycle without T/4 was the only one to reach the
# baseline's accuracy.
DEFAULT_MIN_SHARE = 0.5


@dataclass(frozen=True)
class ProbeShape:
    """One probe: ``clip_len`` frames (or segments) at ``frame_interval``, crops of ``crop_size``."""

    clip_len: int
    frame_interval: int
    crop_size: int
    is_base: bool = False

    @property
    def name(self) -> str:
        return f'T{self.clip_len}_I{self.frame_interval}_S{self.crop_size}'

    def __str__(self) -> str:
        base = ' (base)' if self.is_base else ''
        return f'{self.clip_len} x {self.crop_size} (interval {self.frame_interval}){base}'


def long_cycle_shapes(plan: MultigridPlan, base: PipelineShape) -> list[ProbeShape]:
    """The distinct (T, S) of the plan's long cycle, in the order it trains them, then the base shape
    (``base``: the train pipeline's)."""
    seen: dict[tuple[int, int], ProbeShape] = {}
    for segment in plan.segments:
        shape = segment.long_shape
        key = (shape.clip_len, shape.crop_size)
        if key not in seen:
            seen[key] = ProbeShape(shape.clip_len, span_interval(base, shape.clip_len),
                                   shape.crop_size)
    seen.pop((base.clip_len, base.crop_size), None)
    return list(seen.values()) + [ProbeShape(base.clip_len, base.frame_interval, base.crop_size,
                                             is_base=True)]


def parse_shape(text: str, base: PipelineShape) -> ProbeShape:
    """``TxS`` (e.g. ``4x57``) as a probe shape, at the interval where a clip of T frames spans the
    base clip's time (``base``: the train pipeline's shape)."""
    try:
        clip_len, crop_size = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'--shapes takes TxS (frames x crop, e.g. 4x57), got {text!r}') from None
    if clip_len < 1 or crop_size < 1:
        raise ValueError(f'--shapes: T and S must be positive, got {text!r}')
    return ProbeShape(clip_len, span_interval(base, clip_len), crop_size,
                      is_base=(clip_len, crop_size) == (base.clip_len, base.crop_size))


def probe_schedule(epochs: int) -> list[dict[str, Any]]:
    """Warmup over the first sixth of ``epochs``, then the LR / 10 at 2/3 and 5/6 of them."""
    warmup = max(1, round(epochs / 6))
    milestones = sorted({min(epochs - 1, max(warmup, round(epochs * f))) for f in (2 / 3, 5 / 6)})
    milestones = [m for m in milestones if 0 < m < epochs]
    return [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=warmup,
                 convert_to_iter_based=True),
            dict(type='MultiStepLR', by_epoch=True, begin=0, end=epochs, milestones=milestones,
                 gamma=0.1)]


def probe_config(cfg: Config, shape: ProbeShape, epochs: int) -> Config:
    """The user's config trained as the plain baseline at ``shape`` for ``epochs`` (module docstring)."""
    if epochs < 1:
        raise ValueError(f'--epochs must be >= 1, got {epochs}')
    probe = copy.deepcopy(cfg)
    transforms = train_transforms(probe)
    base = describe_pipeline(transforms, 'train_dataloader.dataset.pipeline')
    loader = probe.train_dataloader
    loader.dataset.pipeline = shaped_transforms(transforms, base, shape.clip_len, shape.frame_interval,
                                                shape.crop_size, scale_jitter=True)
    if transform_name(loader.get('batch_sampler') or {}) in MULTIGRID_ENTRIES:
        loader.pop('batch_sampler')
    probe.custom_hooks = [h for h in probe.get('custom_hooks') or []
                          if transform_name(h) not in MULTIGRID_ENTRIES]
    val_dataset = (probe.get('val_dataloader') or {}).get('dataset')
    if not val_dataset or 'pipeline' not in val_dataset:
        raise ValueError('shape probes validate at the probed shape: the config needs '
                         'val_dataloader.dataset.pipeline')
    val_base = describe_pipeline(val_dataset.pipeline, 'val_dataloader.dataset.pipeline')
    # the base view at S pixels, as training sees it: a final resize outputs S; after a final crop
    # (which would narrow the view) a resize to S is added
    resized = transform_name(val_dataset.pipeline[val_base.final_pos]) == 'Resize'
    val_pipeline = shaped_transforms(val_dataset.pipeline, val_base, shape.clip_len,
                                     span_interval(val_base, shape.clip_len),
                                     shape.crop_size if resized else val_base.crop_size,
                                     scale_jitter=False)
    if not resized and shape.crop_size != val_base.crop_size:
        val_pipeline.insert(val_base.final_pos + 1, dict(type='Resize', keep_ratio=False,
                                                         scale=(shape.crop_size, shape.crop_size)))
    val_dataset.pipeline = val_pipeline
    probe.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs, val_begin=1,
                           val_interval=max(1, epochs // 4))
    probe.param_scheduler = probe_schedule(epochs)
    # the final weights, which tools/shape_probe.py validates at the base shape too
    hooks = probe.setdefault('default_hooks', {})
    hooks['checkpoint'] = dict(hooks.get('checkpoint') or dict(type='CheckpointHook'), by_epoch=True,
                               interval=epochs, max_keep_ckpts=1, save_best=None)
    return probe


def transfer_config(base_probe: Config, checkpoint: Path, precise_bn: int) -> Config:
    """The base shape's probe config set up to test ``checkpoint`` on its validation set: how much of
    what a probe learnt at its own shape carries over to the base shape, at which multigrid's run ends
    and is validated. BN statistics are first recomputed from ``precise_bn`` training batches at the
    base shape (``PreciseBNTestHook``), as a multigrid run with ``precise_bn`` does before validating:
    the probe's own statistics are those of its shape."""
    cfg = copy.deepcopy(base_probe)
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
    cfg.test_cfg = dict(type='TestLoop')
    cfg.load_from = str(checkpoint)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='PreciseBNTestHook', num_batches=precise_bn)]
    return cfg


def validation_curve(work_dir: Path) -> list[dict[str, float]]:
    """(epoch, top1) of every validation in the latest run under ``work_dir`` (mmengine's
    ``vis_data/scalars.json``)."""
    return [dict(epoch=int(r['step']), top1=float(r['acc/top1']))
            for r in latest_scalars(work_dir) if 'acc/top1' in r]


def share_at_base(curve: Sequence[Mapping[str, float]], top1_at_base: float) -> float | None:
    """The share of a probe's last top-1 at its own shape that its weights keep at the base shape
    (None if the probe ended at 0)."""
    return top1_at_base / curve[-1]['top1'] if curve and curve[-1]['top1'] > 0 else None


def weak_shapes(results: Mapping[ProbeShape, list[dict[str, float]]],
                at_base: Mapping[ProbeShape, float], min_share: float) -> list[ProbeShape]:
    """The probed shapes whose weights keep less than ``min_share`` of their own top-1 at the base
    shape."""
    if not 0 < min_share <= 1:
        raise ValueError(f'--min-share must be in (0, 1], got {min_share!r}')
    return [shape for shape, top1 in at_base.items()
            if (share := share_at_base(results[shape], top1)) is not None and share < min_share]


def long_cycle_without(plan: MultigridPlan,
                       shapes: Sequence[ProbeShape]) -> tuple[tuple[float, float], ...]:
    """The plan's ``long_cycle_factors`` without the factors whose (T, S) is one of ``shapes``."""
    dropped = {(s.clip_len, s.crop_size) for s in shapes}
    return tuple(f for f in plan.options.long_cycle_factors
                 if long_cycle_shape(plan.base, *f) not in dropped)


def format_advice(plan: MultigridPlan, results: Mapping[ProbeShape, list[dict[str, float]]],
                  at_base: Mapping[ProbeShape, float], min_share: float) -> str:
    """What the probes say about the long cycle: the shapes whose weights keep less than
    ``min_share`` of their own top-1 at the base shape, and the ``MultigridHook`` option without them."""
    weak = weak_shapes(results, at_base, min_share)
    if not weak:
        return (f'Every probed shape keeps at least {min_share:.0%} of its own top-1 at the base shape: '
                'the long cycle can keep them all.')
    names = ', '.join(f'{s} keeps {share_at_base(results[s], at_base[s]):.0%}' for s in weak)
    factors = long_cycle_without(plan, weak)
    if len(factors) == len(plan.options.long_cycle_factors):
        option = "none of them is in the plan's long_cycle_factors"
    elif all(f == (1.0, 1.0) for f in factors):
        option = 'a long cycle without them: MultigridHook(long_cycle=False)'
    else:
        listed = ', '.join(f'({t:.4g}, {s:.4g})' for t, s in factors)
        option = f'a long cycle without them: MultigridHook(long_cycle_factors=[{listed}])'
    return (f'Below {min_share:.0%} of their own top-1 at the base shape: {names}; {option} '
            '(what each grid saves: docs/choosing_the_grid.md).')


def format_probes(results: Mapping[ProbeShape, list[dict[str, float]]],
                  at_base: Mapping[ProbeShape, float] | None = None) -> str:
    """The table of the probes: top-1 at every validated epoch, the last one against the base's, and
    (``at_base``) each probe's final weights validated at the base shape."""
    base = next((curve for shape, curve in results.items() if shape.is_base), None)
    epochs = sorted({p['epoch'] for curve in results.values() for p in curve})
    lines = ['T x S (interval)'.ljust(28) + ''.join(f'ep {e:<5}' for e in epochs) + 'last vs base']
    for shape, curve in results.items():
        top1 = {p['epoch']: p['top1'] for p in curve}
        row = str(shape).ljust(28) + ''.join(
            f'{100 * top1[e]:5.1f}%  ' if e in top1 else '   -    ' for e in epochs)
        if base and curve and not shape.is_base:
            row += f'{100 * (curve[-1]["top1"] - base[-1]["top1"]):+.1f} points'
        if at_base and shape in at_base:
            row += f'; at the base shape {100 * at_base[shape]:.1f}%'
            share = share_at_base(curve, at_base[shape])
            row += f' ({share:.0%} of its own)' if share is not None else ''
        lines.append(row)
    return '\n'.join(lines)
