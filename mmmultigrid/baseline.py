"""Read the baseline recipe from the user's unchanged mmengine config and make the plan from it.

The base shape comes from ``train_dataloader.batch_size`` and the train pipeline (``SampleFrames`` and
the final crop/resize, inside ``ShapeVaryingPipeline`` or not), the schedule from ``param_scheduler``,
``train_cfg.max_epochs`` and the optimizer LR, the options from the ``MultigridHook`` entry of
``custom_hooks``. Used by ``MultigridHook`` at start-up and by ``tools/plan.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .lr_curve import parse_lr_schedulers
from .pipeline import describe_pipeline, transform_name
from .plan import BaseShape, MultigridOptions, MultigridPlan, build_plan
from .segments import temporal_options

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(MultigridOptions))
#: ``MultigridHook`` arguments that are not plan options, then the keys mmengine reads from the entry.
HOOK_ARGS = ('grouped_bn', 'preflight', 'trace', 'precise_bn', 'loader_check')
ENTRY_KEYS = ('type', 'priority')


def train_transforms(cfg: Mapping[str, Any]) -> list[dict]:
    """The user's train transforms: the inside of ``ShapeVaryingPipeline`` if it is used."""
    dataset = cfg.get('train_dataloader', {}).get('dataset', {})
    pipeline = dataset.get('pipeline')
    if pipeline is None:
        raise ValueError('train_dataloader.dataset.pipeline is missing: multigrid reads the base clip '
                         'length and crop size from it (dataset wrappers are not supported)')
    wrappers = [t for t in pipeline if transform_name(t) == 'ShapeVaryingPipeline']
    if wrappers:
        if len(pipeline) != 1:
            raise ValueError('train_dataloader.dataset.pipeline must be exactly '
                             '[dict(type="ShapeVaryingPipeline", transforms=train_pipeline)], got '
                             f'{[transform_name(t) for t in pipeline]}')
        return list(wrappers[0]['transforms'])
    return list(pipeline)


def hook_options(cfg: Mapping[str, Any]) -> MultigridOptions:
    """The ``MultigridOptions`` given to the ``MultigridHook`` entry of ``custom_hooks``."""
    hooks = [h for h in cfg.get('custom_hooks') or [] if transform_name(h) == 'MultigridHook']
    if len(hooks) > 1:
        raise ValueError(f'custom_hooks holds {len(hooks)} MultigridHook entries; keep one')
    given = hooks[0] if hooks else {}
    unknown = sorted(set(given) - set(OPTION_NAMES + HOOK_ARGS + ENTRY_KEYS))
    if unknown:
        raise TypeError(f'custom_hooks: MultigridHook has no argument {", ".join(unknown)}; its '
                        f'arguments are {", ".join(OPTION_NAMES + HOOK_ARGS)}')
    return MultigridOptions(**{k: given[k] for k in OPTION_NAMES if k in given})


def base_shape(cfg: Mapping[str, Any]) -> BaseShape:
    shape = describe_pipeline(train_transforms(cfg), 'train_dataloader.dataset.pipeline')
    return BaseShape(cfg['train_dataloader'].get('batch_size'), shape.clip_len, shape.frame_interval,
                     shape.crop_size)


def plan_from_config(cfg: Mapping[str, Any], world_size: int,
                     options: MultigridOptions | None = None) -> MultigridPlan:
    """The multigrid plan for ``cfg`` trained on ``world_size`` processes."""
    max_epochs = cfg.get('train_cfg', {}).get('max_epochs')
    if cfg.get('train_cfg', {}).get('type', 'EpochBasedTrainLoop') != 'EpochBasedTrainLoop' or (
            max_epochs is None):
        raise ValueError('multigrid needs train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=N), '
                         f'got train_cfg={dict(cfg.get("train_cfg", {}))!r}')
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f'train_cfg.max_epochs must be a positive int, got {max_epochs!r}')
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', {})
    base_lr = optimizer.get('lr')
    if not isinstance(base_lr, (int, float)) or base_lr <= 0:
        raise ValueError(f'optim_wrapper.optimizer.lr must be a positive number, got {base_lr!r}')
    curve = parse_lr_schedulers(cfg.get('param_scheduler'), max_epochs, float(base_lr))
    options, notes = temporal_options(cfg.get('model', {}), train_transforms(cfg),
                                      options or hook_options(cfg))
    plan = build_plan(base_shape(cfg), options, curve, max_epochs, world_size)
    return dataclasses.replace(plan, notes=notes)
