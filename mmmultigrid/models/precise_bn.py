"""Precise batch norm: running statistics recomputed at the base shape from training batches.

During multigrid training the BN running statistics are an exponential average over batches of every
grid shape, mostly coarse ones until the last phase, while validation and test run at the base shape. The
reference recomputes them before each evaluation from training batches (``BN.USE_PRECISE_STATS``, on in
PySlowFast's multigrid recipes, with fvcore's ``update_bn_stats``). ``MultigridHook(precise_bn=N)`` does
so before each validation and at the end of training: :func:`update_bn_stats` over N batches of the base
shape from :func:`grid_loader`.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, TypeVar

import torch
from mmengine.dist import all_reduce_params
from mmengine.model import is_model_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from mmmultigrid.plan import GridShape
from mmmultigrid.data.sampler import GridIndex

Batch = TypeVar('Batch')


def update_bn_stats(model: nn.Module, batches: Iterable[Batch],
                    forward: Callable[[Batch], object]) -> tuple[list[_BatchNorm], int]:
    """Recompute the running statistics of ``model``'s BN layers from ``batches``.

    The layers are those in training mode now (a layer frozen in eval mode, e.g. by ``norm_eval``, keeps
    its statistics). Each one's running mean and variance become the average over the batches of the
    batch means and unbiased variances (fvcore's ``update_bn_stats``), then the average over ranks when
    distributed. ``forward(batch)`` runs without gradients, with only those layers in training mode
    (dropout and the like off). Momentum, ``num_batches_tracked`` and every module's mode are restored;
    on an error, the statistics too. Returns the layers updated and the number of batches.
    """
    layers = [m for m in model.modules()
              if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    modes = [(m, m.training) for m in model.modules()]
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(),
              bn.num_batches_tracked.clone()) for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: batch i has weight 1/i
        bn.train()
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
                count += 1
        if not count:
            raise ValueError('update_bn_stats got no batch')
    except BaseException:
        for bn, (_, mean, var, _) in zip(layers, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        raise
    finally:
        for bn, (momentum, _, _, tracked) in zip(layers, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        for module, training in modes:
            module.training = training
    all_reduce_params([t for bn in layers for t in (bn.running_mean, bn.running_var)], op='mean')
    return layers, count


def recompute_from_training_forward(model: nn.Module, batches: Iterable[dict]
                                    ) -> tuple[list[_BatchNorm], int]:
    """:func:`update_bn_stats` with the model's training forward (mode ``loss``) on ``batches`` of a
    train loader, through its data preprocessor but without batch blending (mixup/cutmix); ``model``
    may be wrapped (DDP)."""
    model = model.module if is_model_wrapper(model) else model
    return update_bn_stats(model, batches, lambda batch: model._run_forward(
        model.data_preprocessor(batch, False), mode='loss'))


def grid_loader(loader: DataLoader, indices: Iterable[int], shape: GridShape,
                num_batches: int) -> DataLoader:
    """``num_batches`` batches at ``shape`` from the first of ``indices``, loaded as ``loader`` does.

    Same dataset, collate function and number of workers; each index is a :class:`GridIndex`, so
    ``ShapeVaryingPipeline`` makes the clips at ``shape``. The global RNG is not drawn from.
    """
    chosen = [GridIndex(i, shape) for i in itertools.islice(indices, num_batches * shape.batch_size)]
    if len(chosen) < num_batches * shape.batch_size:
        raise ValueError(f'{num_batches} batches of {shape.batch_size} clips need '
                         f'{num_batches * shape.batch_size} indices, got {len(chosen)}')
    batches = [chosen[i:i + shape.batch_size] for i in range(0, len(chosen), shape.batch_size)]
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context,
                      generator=torch.Generator().manual_seed(0))
