"""Why a model cannot run a grid shape, and which multigrid mode it can run.

When the backbone fails at a grid shape, :func:`explain_failure` says where (the innermost module
whose forward raised, with its own parameters: a fully connected layer or an embedding sized for the
base shape shows there), whether the base shape runs, and whether the short cycle alone (T fixed,
``MultigridHook(long_cycle=False)``) or a temporal-only long cycle (S fixed) runs at every one of its
grid shapes, so the error names an option that works, or says that none does.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from mmmultigrid.plan import MultigridPlan, build_plan
from mmmultigrid.models.segments import clip_batch

#: The modes that vary one axis only: what stays fixed, and the ``MultigridHook`` arguments.
ONE_AXIS_MODES = (('only the crop varies (T fixed)', dict(long_cycle=False)),
                  ('only T varies (S fixed)', dict(long_cycle_factors=((0.25, 1.0), (0.5, 1.0), (1.0, 1.0)),
                                                    short_cycle=False)))


def run_clip(model: nn.Module, clip_len: int, crop_size: int) -> None:
    """One forward of a zero clip through the backbone, without gradients."""
    with torch.no_grad():
        model.extract_feat(clip_batch(model, 1, clip_len, crop_size), stage='backbone')


def failing_module(model: nn.Module, run: Callable[[], None]) -> tuple[str, nn.Module] | None:
    """The innermost module whose forward was running when ``run()`` raised (None if it did not)."""
    names = {module: name for name, module in model.named_modules()}
    stack: list[nn.Module] = []

    def enter(module: nn.Module, args: tuple) -> None:
        stack.append(module)

    def leave(module: nn.Module, args: tuple, output: object) -> None:  # None: output unchanged
        stack.pop()

    handles = []
    for module in names:
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        run()
    except Exception:  # noqa: BLE001 (any failure: the stack says where it happened)
        return (names[stack[-1]], stack[-1]) if stack else None
    finally:
        for handle in handles:
            handle.remove()
    return None


def describe_module(name: str, module: nn.Module) -> str:
    """``backbone.fc6 (Linear; weight 4096x8192, bias 4096)``: the module and its own parameters."""
    params = ', '.join(f'{n} {"x".join(map(str, p.shape))}'
                       for n, p in module.named_parameters(recurse=False))
    return f'{name or "the model"} ({type(module).__name__}{"; " + params if params else ""})'


def describe_failure(model: nn.Module, clip_len: int, crop_size: int, error: Exception) -> str:
    """``T=4, S=56 (<error>) in <module>``: the failing shape, the error and where it happens."""
    where = failing_module(model, lambda: run_clip(model, clip_len, crop_size))
    return f'T={clip_len}, S={crop_size} ({error})' + (f' in {describe_module(*where)}' if where else '')


def first_failure(model: nn.Module, plan: MultigridPlan) -> str | None:
    """:func:`describe_failure` of the largest (T, S) of ``plan`` the backbone cannot run, or None."""
    for clip_len, crop_size in sorted({(s.clip_len, s.crop_size) for s in plan.shape_segments()},
                                      key=lambda k: k[0] * k[1] ** 2, reverse=True):
        try:
            run_clip(model, clip_len, crop_size)
        except RuntimeError as error:
            return describe_failure(model, clip_len, crop_size, error)
    return None


def one_axis_plan(plan: MultigridPlan, changes: dict) -> MultigridPlan:
    """``plan`` remade with the options ``changes``."""
    options = dataclasses.replace(plan.options, **changes)
    return build_plan(plan.base, options, plan.lr_curve, plan.baseline_max_epochs, plan.world_size)


def format_options(changes: dict) -> str:
    """``MultigridHook(long_cycle=False)``: the arguments as a config writes them."""
    return 'MultigridHook(' + ', '.join(f'{k}={v!r}' for k, v in changes.items()) + ')'


def explain_failure(model: nn.Module, plan: MultigridPlan, clip_len: int, crop_size: int,
                    error: Exception) -> str:
    """Why the backbone of ``model`` (a recognizer, in eval mode) fails at (T, S), and what works."""
    base = plan.base
    text = f'the backbone cannot run a clip of {describe_failure(model, clip_len, crop_size, error)}'
    try:
        run_clip(model, base.clip_len, base.crop_size)
    except RuntimeError as base_error:
        return (f'{text}; it fails at the base shape T={base.clip_len}, S={base.crop_size} too '
                f'({base_error}): check the model and the train pipeline')
    modes = [(f'{mode} ({format_options(changes)})', first_failure(model, one_axis_plan(plan, changes)))
             for mode, changes in ONE_AXIS_MODES]
    works = [mode for mode, failure in modes if failure is None]
    if works:
        return (f'{text}, but runs at the base shape T={base.clip_len}, S={base.crop_size}; every grid '
                'shape runs where ' + ' or where '.join(works))
    return (f'{text}; it runs at the base shape T={base.clip_len}, S={base.crop_size} but not at every '
            'grid shape where ' + ', nor where '.join(f'{mode}: {failure}' for mode, failure in modes)
            + '; so this model cannot be trained with multigrid (train it without MultigridHook, '
            'MultigridSampler and ShapeVaryingPipeline)')
