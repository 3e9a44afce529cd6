"""Read the baseline recipe from the user's unchanged mmengine config and make the plan from it.

The base shape comes from ``train_dataloader.batch_size`` and the train pipeline (``SampleFrames`` and
the final crop/resize, inside ``ShapeVaryingPipeline`` or not), the schedule from ``param_scheduler``,
``train_cfg.max_epochs`` and the optimizer LR, the options from the ``MultigridHook`` entry of
``custom_hooks``. Used by ``MultigridHook`` at start-up and by ``tools/plan.py``.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from mmengine.config import Config

from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import describe_pipeline, transform_name
from mmmultigrid.plan import BaseShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.models.segments import temporal_options

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(MultigridOptions))
#: ``MultigridHook`` arguments that are not plan options, then the keys mmengine reads from the entry.
HOOK_ARGS = ('grouped_bn', 'preflight', 'trace', 'precise_bn', 'loader_check', 'measure_steps')
ENTRY_KEYS = ('type', 'priority')


def train_transforms(cfg: Mapping[str, Any]) -> list[dict]:
    """The user's train transforms: the inside of ``ShapeVaryingPipeline`` if it is used."""
    dataset = cfg.get('train_dataloader', {}).get('dataset', {})
    if 'dataset' in dataset or 'datasets' in dataset:
        raise ValueError(f'train_dataloader.dataset is a {transform_name(dataset)}, which recomputes '
                         'the indices it passes on and so drops the grid shape each one carries; '
                         'multigrid needs the dataset itself there: merge the annotation files into '
                         'one ann_file of a single dataset')
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


def hook_entry(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``MultigridHook`` entry of ``custom_hooks`` (empty when there is none)."""
    hooks = [h for h in cfg.get('custom_hooks') or [] if transform_name(h) == 'MultigridHook']
    if len(hooks) > 1:
        raise ValueError(f'custom_hooks holds {len(hooks)} MultigridHook entries; keep one')
    return hooks[0] if hooks else {}


def grouped_bn_enabled(cfg: Mapping[str, Any]) -> bool:
    """Whether the config's ``MultigridHook`` groups batch norm (its ``grouped_bn``, default on)."""
    return bool(hook_entry(cfg).get('grouped_bn', True))


def hook_options(cfg: Mapping[str, Any]) -> MultigridOptions:
    """The ``MultigridOptions`` given to the ``MultigridHook`` entry of ``custom_hooks``."""
    given = hook_entry(cfg)
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
    if not cfg.get('train_dataloader'):
        raise ValueError('the config has no train_dataloader: it is a test-only config, and multigrid '
                         'changes training only; start from a config that trains the model')
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


@contextmanager
def base_variable_hint(path: str) -> Iterator[None]:
    """Around ``Config.fromfile(path)``: mmengine's bare ``KeyError: 'train_pipeline'`` for a
    ``{{_base_.NAME}}`` that the base config lacks becomes a ``ValueError`` that says so."""
    try:
        yield
    except KeyError as exc:
        name = exc.args[0] if exc.args else None
        if not isinstance(name, str) or f'_base_.{name}' not in Path(path).read_text():
            raise
        hint = (' (test-only configs have no train_pipeline: multigrid changes training only, so start '
                'from a config that trains the model)' if name == 'train_pipeline' else '')
        raise ValueError(f'{path} uses {{{{_base_.{name}}}}}, which its base config does not define'
                         f'{hint}') from None


def load_config(path: str, options: Mapping[str, Any] | None = None) -> Config:
    """``Config.fromfile(path)`` (a missing ``{{_base_.NAME}}`` said as :func:`base_variable_hint` says
    it) with the ``--cfg-options`` ``options`` merged in."""
    with base_variable_hint(path):
        cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg
