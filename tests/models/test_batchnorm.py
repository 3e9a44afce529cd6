"""GroupedBatchNorm3d: group statistics in training, plain merged BN buffers everywhere else."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gloo import run_on_ranks
from mmmultigrid.models import batchnorm
from mmmultigrid.models.batchnorm import GroupedBatchNorm3d, describe_groups, local_groups, ranks_per_group, \
    use_grouped_batchnorm


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


def test_small_batches_and_eval_are_plain_bn() -> None:
    grouped, plain = pair()
    for n in (4, 8, 9):  # <= group size, or with no split closer to it than the whole batch
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


# --- groups across processes -----------------------------------------------------------------------
def test_a_batch_the_group_size_does_not_divide_splits_closest_to_it() -> None:
    assert [local_groups(n, 8) for n in (4, 8, 9, 12, 16, 18, 60, 96)] == [1, 1, 1, 2, 2, 2, 6, 12]
    assert describe_groups(12, 8, 1) == '2 groups of 6 in each process'
    assert describe_groups(9, 8, 1) == 'one group of 9 in each process'
    grouped, plain = pair()
    x = torch.randn(12, 4, 2, 3, 3)
    expected = torch.cat([plain(x[g::2]) for g in range(2)])  # samples g, g + 2, ... form group g
    order = torch.cat([torch.arange(g, 12, 2) for g in range(2)])
    assert torch.allclose(grouped(x)[order], expected, atol=1e-5)


def test_ranks_per_group() -> None:
    assert ranks_per_group(2, 8, 8) == 4  # ranks 0-3 and 4-7
    assert ranks_per_group(4, 8, 2) == 2
    assert ranks_per_group(2, 8, 2) == 1  # 4 ranks do not divide a world of 2
    assert ranks_per_group(3, 8, 8) == 1  # 3 does not divide 8
    assert ranks_per_group(8, 8, 8) == ranks_per_group(16, 8, 8) == ranks_per_group(4, 8, 1) == 1
    assert describe_groups(16, 8, 2) == '2 groups of 8 in each process'
    assert describe_groups(4, 8, 2) == 'groups of 8 over 2 neighbouring ranks'
    assert describe_groups(2, 8, 2) == 'one group of 2 in each process'


def union_data(steps: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, loss weights) of ``steps`` batches of 4 clips: 2 per rank on 2 ranks."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, 4, 4, 2, 3, 3, generator=gen) * 3 + 1
    return x, torch.randn(x.shape, generator=gen)


def _train_half_of_the_union(rank: int, world_size: int, out_dir: Path) -> None:
    grouped, _ = pair()
    grouped.group_size = 4
    inputs, loss_weights = union_data()
    mine = slice(2 * rank, 2 * rank + 2)
    result: dict[str, list] = {'out': [], 'grad': []}
    for x, w in zip(inputs[:, mine], loss_weights[:, mine]):
        x = x.clone().requires_grad_()
        out = grouped(x)
        (out * w).sum().backward()
        result['out'].append(out.detach())
        result['grad'].append(x.grad)
    result.update({name: getattr(grouped, name).detach().clone() for name in (
        'running_mean', 'running_var', 'num_batches_tracked')})
    bf16_out = grouped(inputs[0, mine].bfloat16())
    assert bf16_out.dtype == torch.bfloat16 and grouped.running_var.dtype == torch.float32
    result['bf16_out'] = bf16_out.float()
    result.update(weight_grad=grouped.weight.grad, bias_grad=grouped.bias.grad)
    torch.save(result, out_dir / f'rank{rank}.pt')


def test_groups_across_two_processes_equal_bn_over_the_union(tmp_path: Path) -> None:
    """Group size 4, 2 clips per rank on 2 gloo processes: plain BN over the 4 clips, forward and
    backward (input, weight and bias gradients), and the same running statistics on both ranks."""
    run_on_ranks(_train_half_of_the_union, tmp_path)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    _, plain = pair()
    inputs, loss_weights = union_data()
    for step, (x, w) in enumerate(zip(inputs, loss_weights)):
        x = x.clone().requires_grad_()
        out = plain(x)
        (out * w).sum().backward()
        torch.testing.assert_close(torch.cat([r['out'][step] for r in ranks]), out.detach())
        torch.testing.assert_close(torch.cat([r['grad'][step] for r in ranks]), x.grad)
    # Each rank holds its clips' share of the parameter gradients; DDP sums (averages) them.
    for name in ('weight', 'bias'):
        torch.testing.assert_close(ranks[0][f'{name}_grad'] + ranks[1][f'{name}_grad'],
                                   getattr(plain, name).grad)
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        assert torch.equal(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], getattr(plain, name))
    with torch.no_grad():
        expected = F.batch_norm(inputs[0].bfloat16().float(), None, None, plain.weight, plain.bias,
                                True, 0.0, plain.eps)
    torch.testing.assert_close(torch.cat([r['bf16_out'] for r in ranks]),
                               expected.bfloat16().float(), atol=0.02, rtol=0.01)


def _local_groups_stay_local(rank: int, world_size: int) -> None:
    torch.manual_seed(rank)  # different clips on each rank: any exchange would show
    grouped, plain = pair()
    for group_size, n in ((4, 4), (8, 2)):  # a whole group; 8 / 2 = 4 ranks do not divide 2
        grouped.group_size = group_size
        x = torch.randn(n, 4, 2, 3, 3)
        torch.testing.assert_close(grouped(x), plain(x))
    grouped.group_size = 4
    x = torch.randn(8, 4, 2, 3, 3)
    by_group = x.view(4, 2, 4, 2, 3, 3)  # 2 local groups: samples g, g + 2, ...
    expected = torch.stack([F.batch_norm(by_group[:, g], None, None, plain.weight, plain.bias, True,
                                         0.0, plain.eps) for g in range(2)], 1).view_as(x)
    torch.testing.assert_close(grouped(x), expected)
    assert not batchnorm._neighbour_groups  # no process group was made, nothing was exchanged


def test_local_batches_at_or_above_the_group_size_stay_local() -> None:
    run_on_ranks(_local_groups_stay_local)


def _compiled_matches_eager(rank: int, world_size: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4))
    use_grouped_batchnorm(model, 4)
    batchnorm.neighbour_group(2)  # as MultigridHook does at start-up: dynamo cannot trace new_group
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    x = torch.randn(2, 3, 2, 3, 3) + rank
    results = []
    for forward in (model, compiled):
        x_ = x.clone().requires_grad_()
        out = forward(x_)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        results.append((out, x_.grad))
    torch.testing.assert_close(results[0], results[1])


def test_groups_across_processes_compile_in_one_graph() -> None:
    """MultigridHook compiles the backbone with fullgraph=True: the exchange must trace (dynamo)."""
    run_on_ranks(_compiled_matches_eager)
