"""Batch norm over groups of ``bn_base_size`` clips, whatever the per-GPU batch of the current shape.

Multigrid multiplies the batch by up to 16; computing BN statistics over the whole batch would change the
model's behaviour with the shape. As in the method, the batch is normalised in groups of
``bn_base_size`` clips. The running statistics are updated with the merged statistics of the groups (mean
of means; mean of variances plus variance of the means, i.e. the whole batch's), so the standard BN
buffers always hold plain BN statistics: validation, checkpoints and ``tools/test.py`` see an ordinary
``BatchNorm3d``. The conversion swaps the class of existing modules in place: parameters, buffers, the
optimizer and a DDP wrapper are untouched, and ``isinstance(m, nn.BatchNorm3d)`` still holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupedBatchNorm3d(nn.BatchNorm3d):
    """``BatchNorm3d`` whose training statistics come from groups of ``group_size`` samples.

    A batch of N samples forms ``N // group_size`` groups when N is a multiple of ``group_size`` above
    it (samples ``g, g + k, g + 2k, ...`` form group ``g``); otherwise the whole batch is one group.
    """

    group_size: int = 8

    def num_groups(self, batch: int) -> int:
        if batch > self.group_size and batch % self.group_size == 0:
            return batch // self.group_size
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.num_groups(x.shape[0]) if self.training else 1
        if groups == 1:
            return super().forward(x)
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

    @torch.no_grad()
    def _update_running_stats(self, group_mean: torch.Tensor, group_var: torch.Tensor,
                              group_count: int) -> None:
        """EMA update with the whole batch's statistics, merged from the groups' (total variance)."""
        groups = group_mean.shape[0]
        mean = group_mean.mean(0)
        spread = ((group_mean - mean)**2).sum(0)
        var = ((group_count - 1) * group_var.sum(0) + group_count * spread) / (
            groups * group_count - 1)
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
