"""Batch norm over groups of ``bn_base_size`` clips, whatever the per-GPU batch of the current shape.

Multigrid multiplies the batch by up to 16; computing BN statistics over the whole batch would change the
model's behaviour with the shape. As in the method, the batch is normalised in groups of
``bn_base_size`` clips: a larger per-GPU batch splits into local groups, a smaller one joins the batches
of ``bn_base_size / batch`` neighbouring ranks (statistics all-reduced within the group, as sync BN
does). The running statistics are updated with the merged statistics of the groups (mean of means; mean
of variances plus variance of the means, i.e. the whole batch's), so the standard BN buffers always hold
plain BN statistics: validation, checkpoints and ``tools/test.py`` see an ordinary ``BatchNorm3d``. The
conversion swaps the class of existing modules in place: parameters, buffers, the optimizer and a DDP
wrapper are untouched, and ``isinstance(m, nn.BatchNorm3d)`` still holds.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def ranks_per_group(batch: int, group_size: int, world_size: int) -> int:
    """Neighbouring ranks whose batches of ``batch`` clips form one statistics group of ``group_size``.

    ``group_size // batch`` where ``batch`` is below ``group_size``, divides it, and the quotient divides
    ``world_size``; otherwise 1 (the group stays in the process).
    """
    if batch < group_size and group_size % batch == 0 and world_size % (group_size // batch) == 0:
        return group_size // batch
    return 1


def local_groups(batch: int, group_size: int) -> int:
    """The number of equal groups a batch of ``batch`` samples splits into within a process.

    1 up to ``group_size``; above it ``batch // group_size`` when ``group_size`` divides the batch, else
    the divisor of ``batch`` whose groups come closest to ``group_size`` (the larger groups on a tie):
    12 with ``group_size`` 8 gives 2 groups of 6, 60 gives 6 groups of 10, 9 one group of 9.
    """
    if batch <= group_size:
        return 1
    if batch % group_size == 0:
        return batch // group_size
    divisors = [g for g in range(1, batch + 1) if batch % g == 0]
    return min(divisors, key=lambda g: (abs(batch / g - group_size), -batch / g))


def describe_groups(batch: int, group_size: int, world_size: int) -> str:
    """How a training batch of ``batch`` clips per process is normalised, in words."""
    groups = local_groups(batch, group_size)
    if groups > 1:
        return f'{groups} groups of {batch // groups} in each process'
    ranks = ranks_per_group(batch, group_size, world_size)
    if ranks > 1:
        return f'groups of {group_size} over {ranks} neighbouring ranks'
    return f'one group of {batch} in each process'


_neighbour_groups: dict[int, tuple[Any, Any]] = {}  # ranks per group -> (WORLD it was made in, group)


def neighbour_group(ranks: int) -> Any:
    """This process's group of ``ranks`` neighbouring ranks (``[0, ranks)``, ``[ranks, 2 ranks)``, ...).

    The first call for ``ranks`` makes all the groups, which every rank must do at the same point (it
    does: every rank has the same batch shape at each iteration); later calls reuse them.
    """
    world = dist.group.WORLD
    cached = _neighbour_groups.get(ranks)
    if cached is None or cached[0] is not world:
        groups = [dist.new_group(list(range(first, first + ranks)))
                  for first in range(0, dist.get_world_size(), ranks)]
        cached = _neighbour_groups[ranks] = (world, groups[dist.get_rank() // ranks])
    return cached[1]


class _GroupSum(torch.autograd.Function):
    """All-reduce (sum) within a process group; the gradient is summed within the group too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


class GroupedBatchNorm3d(nn.BatchNorm3d):
    """``BatchNorm3d`` whose training statistics come from groups of ``group_size`` samples.

    A batch of N samples above ``group_size`` forms ``k = local_groups(N, group_size)`` equal groups
    (samples ``g, g + k, g + 2k, ...`` form group ``g``): ``N // group_size`` when ``group_size``
    divides N, else the split closest to it. A batch below ``group_size`` that divides it
    joins the batches of ``group_size // N`` neighbouring ranks, when that number divides the world size
    (:func:`ranks_per_group`). Otherwise the whole batch is one group.
    """

    group_size: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            n = x.shape[0]
            if n > self.group_size:
                groups = local_groups(n, self.group_size)
                if groups > 1:
                    return self._local_groups_forward(x, groups)
            # distributed first: a single process then adds no guard on n (torch.compile graphs)
            if dist.is_available() and dist.is_initialized() and n < self.group_size:
                ranks = ranks_per_group(n, self.group_size, dist.get_world_size())
                if ranks > 1:
                    return self._cross_rank_forward(x, ranks)
        return super().forward(x)

    def _local_groups_forward(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        n, c = x.shape[:2]
        grouped = x.reshape(n // groups, c * groups, *x.shape[2:])
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        if not self.track_running_stats:
            return F.batch_norm(grouped, None, None, weight, bias, True, 0.0, self.eps).reshape(x.shape)
        # With momentum 1 the fused kernel leaves each group's mean and unbiased variance in these
        # buffers, so merging them costs no extra pass over the activations. They take the running
        # statistics' dtype, not the input's: under autocast the input is float16/bfloat16 while the
        # weights and running statistics stay float32, and batch_norm accepts a low-precision input
        # only when all four are float32 (statistics are then also computed in float32, as in plain BN).
        group_mean = self.running_mean.new_zeros(c * groups)
        group_var = self.running_var.new_zeros(c * groups)
        out = F.batch_norm(grouped, group_mean, group_var, weight, bias, True, 1.0, self.eps)
        self._update_running_stats(group_mean.view(groups, c), group_var.view(groups, c),
                                   x.numel() // (c * groups))
        return out.reshape(x.shape)

    def _cross_rank_forward(self, x: torch.Tensor, ranks: int) -> torch.Tensor:
        """Normalise with the statistics of the group's ``ranks`` batches (equal sizes on all ranks).

        One all-reduce carries every rank's per-channel mean and variance (each rank fills its own
        slot), so they merge exactly (law of total variance) with no cancellation; its backward sums the
        gradients of the statistics over the group, which makes input gradients those of BN over the
        union. Statistics are float32 for float16/bfloat16 inputs, as in plain BN under autocast.
        """
        c = x.shape[1]
        stats_x = x.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(stats_x, dim=[0, *range(2, x.dim())], correction=0)
        slot = dist.get_rank() % ranks
        local = torch.stack([mean, var])[None]
        slots = torch.cat([local.new_zeros(slot, 2, c), local, local.new_zeros(ranks - 1 - slot, 2, c)])
        means, variances = _GroupSum.apply(slots, neighbour_group(ranks)).unbind(1)
        mean = means.mean(0)
        var = variances.mean(0) + (means - mean).pow(2).mean(0)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        view = (1, c) + (1, ) * (x.dim() - 2)
        out = torch.addcmul(shift.view(view), stats_x, scale.view(view)).to(x.dtype)
        if self.track_running_stats:
            count = ranks * x.numel() // c
            self._update_ema(mean.detach(), var.detach() * (count / (count - 1)))
        return out

    @torch.no_grad()
    def _update_running_stats(self, group_mean: torch.Tensor, group_var: torch.Tensor,
                              group_count: int) -> None:
        """EMA update with the whole batch's statistics, merged from the groups' (total variance)."""
        groups = group_mean.shape[0]
        mean = group_mean.mean(0)
        spread = ((group_mean - mean)**2).sum(0)
        var = ((group_count - 1) * group_var.sum(0) + group_count * spread) / (
            groups * group_count - 1)
        self._update_ema(mean, var)

    @torch.no_grad()
    def _update_ema(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Move the running statistics towards the batch's ``mean`` and unbiased ``var``."""
        self.num_batches_tracked += 1
        momentum = (1.0 / float(self.num_batches_tracked)
                    if self.momentum is None else self.momentum)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(var, alpha=momentum)


def use_grouped_batchnorm(model: nn.Module, group_size: int) -> int:
    """Make every ``BatchNorm3d`` of ``model`` a :class:`GroupedBatchNorm3d`; returns how many."""
    if group_size < 1:
        raise ValueError(f'MultigridHook.bn_base_size must be >= 1, got {group_size}')
    count = 0
    for module in model.modules():
        if type(module) in (nn.BatchNorm3d, GroupedBatchNorm3d):
            module.__class__ = GroupedBatchNorm3d
            module.group_size = group_size
            count += 1
    return count
