"""GroupedBatchNorm3d: group statistics in training, plain merged BN buffers everywhere else."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmmultigrid.batchnorm import GroupedBatchNorm3d, use_grouped_batchnorm


def pair(momentum: float | None = 0.1) -> tuple[nn.BatchNorm3d, nn.BatchNorm3d]:
    """(grouped, plain) copies of one BN layer with non-trivial affine parameters."""
    torch.manual_seed(0)
    plain = nn.BatchNorm3d(4, momentum=momentum)
    plain.weight.data.uniform_(0.5, 1.5)
    plain.bias.data.uniform_(-1, 1)
    grouped = copy.deepcopy(plain)
    assert use_grouped_batchnorm(nn.Sequential(grouped), 8) == 1
    return grouped, plain


def test_training_output_normalises_each_group_of_eight() -> None:
    grouped, plain = pair()
    x = torch.randn(32, 4, 3, 5, 5) * 3 + 1
    by_group = x.view(8, 4, 4, 3, 5, 5)  # group g holds samples g, g + 4, g + 8, ...
    expected = torch.stack([
        nn.functional.batch_norm(by_group[:, g], None, None, plain.weight, plain.bias, True, 0.0,
                                 plain.eps) for g in range(4)], 1).view_as(x)
    assert torch.allclose(grouped(x), expected, atol=1e-5)
    assert not torch.allclose(grouped(x), plain(x), atol=1e-3)  # whole-batch BN would differ


@pytest.mark.parametrize('momentum', [0.1, None])
def test_running_stats_are_the_merged_whole_batch_statistics(momentum: float | None) -> None:
    grouped, plain = pair(momentum)
    for step in range(3):
        x = torch.randn(24, 4, 2, 4, 4) * (step + 1) + step
        grouped(x)
        plain(x)
    assert torch.allclose(grouped.running_mean, plain.running_mean, atol=1e-5)
    assert torch.allclose(grouped.running_var, plain.running_var, atol=1e-4)
    assert int(grouped.num_batches_tracked) == int(plain.num_batches_tracked) == 3


def test_small_or_indivisible_batches_and_eval_are_plain_bn() -> None:
    grouped, plain = pair()
    for n in (4, 8, 12):  # <= group size, or not a multiple of it: one group
        x = torch.randn(n, 4, 2, 3, 3)
        assert torch.allclose(grouped(x), plain(x), atol=1e-5)
    grouped.eval()
    plain.eval()
    x = torch.randn(16, 4, 2, 3, 3)
    assert torch.equal(grouped(x), plain(x))


def test_gradients_reach_the_shared_parameters() -> None:
    grouped, _ = pair()
    grouped(torch.randn(16, 4, 2, 3, 3)).pow(2).sum().backward()
    assert grouped.weight.grad is not None and grouped.weight.grad.abs().sum() > 0


def test_conversion_keeps_parameters_buffers_and_state_dict() -> None:
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.BatchNorm2d(4))
    weight, mean = model[1].weight, model[1].running_mean
    keys = list(model.state_dict())
    assert use_grouped_batchnorm(model, 8) == 1
    assert isinstance(model[1], GroupedBatchNorm3d) and isinstance(model[1], nn.BatchNorm3d)
    assert model[1].weight is weight and model[1].running_mean is mean
    assert type(model[2]) is nn.BatchNorm2d
    assert list(model.state_dict()) == keys
    plain = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.BatchNorm2d(4))
    plain.load_state_dict(model.state_dict(), strict=True)


def test_bad_group_size() -> None:
    with pytest.raises(ValueError, match='bn_base_size'):
        use_grouped_batchnorm(nn.BatchNorm3d(2), 0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_matches_plain_bn_per_group_with_float32_statistics(dtype: torch.dtype) -> None:
    """Under CPU autocast the activations are low precision; BN statistics stay float32."""
    grouped, plain = pair()
    conv = nn.Conv3d(3, 4, 1)
    x = torch.randn(32, 3, 3, 5, 5) * 3 + 1
    with torch.autocast('cpu', dtype=dtype):
        h = conv(x)
        out = grouped(h)
        by_group = h.view(8, 4, 4, 3, 5, 5)
        expected = torch.stack([
            nn.functional.batch_norm(by_group[:, g], None, None, plain.weight, plain.bias, True,
                                     0.0, plain.eps) for g in range(4)], 1).view_as(h)
        plain(h)  # the whole batch, for the running statistics
    assert h.dtype == out.dtype == dtype
    torch.testing.assert_close(out, expected)  # dtype's default tolerance
    for name in ('running_mean', 'running_var'):
        assert getattr(grouped, name).dtype == torch.float32
        torch.testing.assert_close(getattr(grouped, name), getattr(plain, name))
    out.float().pow(2).sum().backward()
    assert grouped.weight.grad.dtype == torch.float32 and grouped.weight.grad.abs().sum() > 0
