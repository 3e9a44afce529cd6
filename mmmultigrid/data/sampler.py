"""``MultigridSampler``: the batch sampler that makes every batch the shape the plan says.

The grid shape travels inside the index: each yielded index is a :class:`GridIndex`, an ``int`` that also
carries its batch's :class:`~mmmultigrid.plan.GridShape`. mmengine's ``BaseDataset.__getitem__`` passes
the index through ``get_data_info`` into ``results['sample_idx']`` unchanged, so it reaches
:class:`~mmmultigrid.data.pipeline.ShapeVaryingPipeline` in whichever worker loads the sample, persistent or
not, and no loader, worker or pipeline is ever rebuilt.
"""
from __future__ import annotations

import math
from typing import Iterator, Sized

from mmaction.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

from mmmultigrid.plan import GridShape, MultigridPlan


class GridIndex(int):
    """A dataset index that carries the grid shape of the batch it belongs to."""

    shape: GridShape

    def __new__(cls, index: int, shape: GridShape) -> 'GridIndex':
        obj = super().__new__(cls, index)
        obj.shape = shape
        return obj

    def __reduce__(self):
        return GridIndex, (int(self), self.shape)

    def __repr__(self) -> str:
        s = self.shape
        return f'GridIndex({int(self)}, B={s.batch_size}, T={s.clip_len}, S={s.crop_size})'


@DATA_SAMPLERS.register_module()
class MultigridSampler(Sampler[list[GridIndex]]):
    """Batch sampler yielding shape-homogeneous batches whose size and shape follow the multigrid plan.

    Use as ``train_dataloader.batch_sampler=dict(type='MultigridSampler')``; the Runner passes the
    configured ``sampler`` (e.g. ``DefaultSampler``) and ``batch_size``. ``MultigridHook`` attaches the
    plan before training; batch ``i`` of an epoch takes the ``i``-th shape of that epoch's short cycle,
    round-robin, and holds ``shape.batch_size`` indices drawn in order from the wrapped sampler.

    Invariants:
        * The same seed, dataset length and epoch give the identical sequence of batch shapes on every
          rank, and every rank yields the same number of batches: each rank uses the same count of
          samples (the wrapped sampler's per-rank count, equal on all ranks), and an incomplete last
          batch is dropped, so no sample is used twice in an epoch.
        * ``len()`` is the exact number of batches the next ``iter()`` yields.
        * The epoch is read from the wrapped sampler, which mmengine's ``DistSamplerSeedHook`` seeds
          (it calls ``batch_sampler.sampler.set_epoch``, never the batch sampler's).
        * Every index is a :class:`GridIndex` carrying its batch's shape.

    Args:
        sampler: The per-sample sampler to draw indices from; must have ``set_epoch`` and ``epoch``.
        batch_size: The baseline's per-GPU batch size (``train_dataloader.batch_size``).
    """

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        if not isinstance(sampler, Sized) or not hasattr(sampler, 'set_epoch') or not hasattr(
                sampler, 'epoch'):
            raise TypeError('MultigridSampler wraps an epoch-based sampler with __len__, set_epoch() '
                            'and epoch (e.g. train_dataloader.sampler=dict(type="DefaultSampler")), '
                            f'got {type(sampler).__name__}')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'train_dataloader.batch_size must be a positive int, got {batch_size!r}')
        self.sampler = sampler
        self.batch_size = batch_size
        self.plan: MultigridPlan | None = None

    def set_plan(self, plan: MultigridPlan) -> None:
        """Attach the plan (done by ``MultigridHook.before_train``)."""
        if plan.base.batch_size != self.batch_size:
            raise ValueError(f'the plan was made for batch_size={plan.base.batch_size}, but '
                             f'train_dataloader.batch_size is {self.batch_size}')
        self.plan = plan

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank uses per epoch: the same count on every rank."""
        sampler = self.sampler
        if getattr(sampler, 'round_up', True) or not hasattr(sampler, 'dataset'):
            return len(sampler)
        # DefaultSampler(round_up=False) gives ranks ceil or floor shares: use the floor on all.
        return len(sampler.dataset) // sampler.world_size

    def shapes(self, epoch: int) -> tuple[GridShape, ...]:
        """The short-cycle shapes of ``epoch``."""
        if self.plan is None:
            raise RuntimeError('MultigridSampler has no plan: add dict(type="MultigridHook") to '
                               'custom_hooks (it attaches the plan before training)')
        return self.plan.epoch_shapes(epoch)

    def epoch_length(self, epoch: int) -> int:
        """Exact number of batches in ``epoch``."""
        return self.plan_segment_batches(epoch)

    def plan_segment_batches(self, epoch: int) -> int:
        self.shapes(epoch)
        return self.plan.segment_at(epoch).batches_per_epoch(self.samples_per_rank)

    def __len__(self) -> int:
        if self.plan is None:  # before the hook runs (e.g. the loop's initial length): baseline count
            return math.ceil(self.samples_per_rank / self.batch_size)
        return self.epoch_length(self.epoch)

    def __iter__(self) -> Iterator[list[GridIndex]]:
        shapes = self.shapes(self.epoch)
        remaining = self.samples_per_rank
        indices = iter(self.sampler)
        for i in range(self.epoch_length(self.epoch)):
            shape = shapes[i % len(shapes)]
            remaining -= shape.batch_size
            yield [GridIndex(next(indices), shape) for _ in range(shape.batch_size)]
