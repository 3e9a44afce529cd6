"""torch.compile for multigrid training: every grid shape compiled, never a silent fall-back to eager.

With ``compile=True`` mmengine 0.10.7 compiles ``model.train_step``. On a multigrid run (torch 2.13,
measured on the tiny test config) dynamo then breaks the graph in the data preprocessor, the loss and the
optimizer wrapper, and recompiles the model's frames for every batch size (its per-sample lists are
guarded on their length), with T and S made dynamic after their first change
(``automatic_dynamic_shapes``); the data preprocessor and mmengine's ``HistoryBuffer.update`` reach
``recompile_limit`` (8) and from then on run eagerly, with only a warning in the log.

``MultigridHook`` compiles the backbone instead: it does nearly all the work and takes and returns tensors
only. It is compiled with ``fullgraph=True`` and ``recompile_limit`` = the plan's number of grid shapes,
so a graph break, or a recompile beyond one per grid shape, raises an error instead of running eagerly.
The config's ``compile.dynamic`` (torch.compile's argument) picks the strategy:

- absent or ``False``: ``static``, one graph per grid shape with kernels specialised to it (default);
- ``None``: ``automatic``, torch's default: static at the first shape, then dynamic in the dimensions
  that changed, so fewer graphs;
- ``True``: ``dynamic``, every dimension symbolic from the first shape (tracing a tiny SlowFast this way
  did not finish in 4 minutes on CPU).

Validation and test run the backbone eagerly: their batch sizes are not grid shapes.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

STRATEGIES: dict[bool | None, str] = {
    False: 'static shapes (one graph per grid shape)',
    None: 'automatic dynamic shapes (static at the first shape, then dynamic where shapes changed)',
    True: 'dynamic shapes (every dimension symbolic)',
}


def _compile_with_recompile_limit(fn: Callable[..., Any], limit: int,
                                  **options: Any) -> Callable[..., Any]:
    """``torch.compile(fn, **options)`` whose frames compile at most ``limit`` times, then raise
    ``FailOnRecompileLimitHit``.

    torch >= 2.13 takes ``recompile_limit`` and ``isolate_recompiles`` (a cache of its own) in
    ``torch.compile``; earlier versions (2.11 on the GPU image) have only dynamo's process-wide
    ``recompile_limit`` and ``fail_on_recompile_limit_hit``, so they are set around each call.
    """
    if 'recompile_limit' in inspect.signature(torch.compile).parameters:
        return torch.compile(fn, recompile_limit=limit, isolate_recompiles=True, **options)
    compiled = torch.compile(fn, **options)

    def limited(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
            return compiled(*args, **kwargs)

    return limited


def compile_backbone(model: nn.Module, num_shapes: int, compile_cfg: bool | dict[str, Any]) -> str:
    """Compile ``model.backbone`` for training at ``num_shapes`` grid shapes; returns the log line.

    ``compile_cfg`` is the config's ``compile``: ``True``, or torch.compile's keyword arguments.
    """
    options = dict(compile_cfg) if isinstance(compile_cfg, dict) else {}
    dynamic = options.pop('dynamic', False)
    if dynamic not in STRATEGIES:
        raise ValueError(f'compile.dynamic must be True, False or None, got {dynamic!r}')
    for key in ('fullgraph', 'recompile_limit'):
        if key in options:
            raise ValueError(f'compile.{key}={options[key]!r}: MultigridHook sets {key} itself so that '
                             'no grid shape runs eagerly; remove it from compile')
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f'compile: MultigridHook compiles model.backbone, which {type(model).__name__} '
                        'lacks; remove compile from the config')
    eager = backbone.forward
    compiled = _compile_with_recompile_limit(eager, num_shapes, fullgraph=True, dynamic=dynamic,
                                             **options)

    def forward(*args: Any, **kwargs: Any) -> Any:
        return (compiled if backbone.training else eager)(*args, **kwargs)

    backbone.forward = forward
    return (f'torch.compile: the backbone ({type(backbone).__name__}) is compiled for training with '
            f'{STRATEGIES[dynamic]}, fullgraph=True and recompile_limit={num_shapes} (the plan\'s grid '
            'shapes): a graph break or a further recompile raises an error; validation and test run it '
            'eagerly')
