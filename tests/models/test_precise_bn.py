"""Precise BN: statistics recomputed from base-shape training batches, averaged over ranks."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gloo import run_on_ranks
from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.engine.hooks.multigrid_hook import MultigridHook
from mmmultigrid.engine.run_scalars import latest_scalars
from mmmultigrid.models.precise_bn import update_bn_stats
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import free_port, run, train, write_tiny_multigrid_config
from test_multigrid_hook import read_trace


def tiny_model() -> nn.Sequential:
    """Conv, grouped BN (groups of 2), ReLU, dropout, conv, BN, and a frozen (eval-mode) BN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Conv3d(4, 4, 1), nn.BatchNorm3d(4), nn.BatchNorm3d(4))
    use_grouped_batchnorm(model[:2], 2)
    model.train()
    model[6].eval()  # as norm_eval leaves it
    return model


def recompute(model: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Run update_bn_stats; returns each updated layer's (mean, unbiased var) per batch of its input."""
    seen: dict[nn.Module, list] = {model[1]: [], model[5]: []}
    handles = [bn.register_forward_pre_hook(
        lambda m, args: seen[m].append(torch.var_mean(args[0], dim=(0, 2, 3, 4))[::-1]))
        for bn in seen]
    layers, count = update_bn_stats(model, batches, model)
    for handle in handles:
        handle.remove()
    assert layers == [model[1], model[5]] and count == len(batches)
    return [tuple(torch.stack(s).mean(0) for s in zip(*seen[bn])) for bn in layers]


def test_statistics_are_the_average_of_the_batches_statistics() -> None:
    model = tiny_model()
    for _ in range(3):  # training moves the running statistics and counts batches
        model(torch.randn(4, 3, 2, 3, 3))
    frozen = model[6].running_mean.clone()
    tracked = model[1].num_batches_tracked.clone()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 2, 3, 3, generator=gen) * (i + 1) + i for i in range(3)]
    for bn, (mean, var) in zip((model[1], model[5]), recompute(model, batches)):
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
        assert bn.momentum == 0.1
    assert torch.equal(model[1].num_batches_tracked, tracked)
    assert torch.equal(model[6].running_mean, frozen)  # frozen layers keep their statistics
    assert [m.training for m in model] == [True] * 6 + [False]


def test_statistics_come_from_dropout_free_forwards() -> None:
    """Dropout is off during the recomputation: the same batches give the same statistics."""
    model = tiny_model()
    batches = [torch.randn(4, 3, 2, 3, 3) for _ in range(2)]
    update_bn_stats(model, batches, model)
    first = model[5].running_var.clone()
    update_bn_stats(model, batches, model)
    assert torch.equal(model[5].running_var, first)


def test_an_error_restores_the_statistics() -> None:
    model = tiny_model()
    model(torch.randn(4, 3, 2, 3, 3))
    before = [t.clone() for t in model.buffers()]

    def failing(batch: torch.Tensor) -> None:
        model(batch)
        raise RuntimeError('loader failed')

    with pytest.raises(RuntimeError, match='loader failed'):
        update_bn_stats(model, [torch.randn(4, 3, 2, 3, 3)], failing)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before))
    assert model.training and model[1].momentum == 0.1


def _recompute_on_rank(rank: int, world_size: int, out_dir: Path) -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(rank)  # each rank its own batches
    batches = [torch.randn(4, 3, 2, 3, 3, generator=gen) * (rank + 1) for _ in range(2)]
    local = recompute(model, batches)
    torch.save({'local': local, 'stats': [(bn.running_mean, bn.running_var)
                                          for bn in (model[1], model[5])]}, out_dir / f'rank{rank}.pt')


def test_statistics_are_averaged_over_two_processes(tmp_path: Path) -> None:
    """On 2 gloo processes: both ranks end with the same statistics, the mean of their own."""
    run_on_ranks(_recompute_on_rank, tmp_path)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1)]
    for layer in range(2):
        for stat in range(2):
            values = [r['stats'][layer][stat] for r in ranks]
            assert torch.equal(values[0], values[1])
            own = [r['local'][layer][stat] for r in ranks]
            assert not torch.allclose(own[0], own[1])
            torch.testing.assert_close(values[0], (own[0] + own[1]) / 2)


@pytest.mark.parametrize('value, error', [(-1, ValueError), (True, TypeError), (2.5, TypeError)])
def test_bad_precise_bn_option(value: object, error: type) -> None:
    with pytest.raises(error, match=f'MultigridHook.precise_bn must be .*got {value!r}'):
        MultigridHook(precise_bn=value)


def test_training_recomputes_before_each_validation(synthetic_dataset: SyntheticDataset,
                                                    tmp_path: Path) -> None:
    """tools/train.py with precise_bn=2, validating every 2 of 6 epochs: after epochs 2, 4 and 6."""
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset, validate=True,
                                         hook='precise_bn=2, preflight=False',
                                         extra='train_cfg = dict(max_epochs=4, val_interval=2)')
    proc = train(config, tmp_path / 'work')
    log = proc.stdout + proc.stderr
    events = re.findall(r'MultigridHook: (precise BN): .*|Saving checkpoint at (\d+) epochs|'
                        r'Epoch\(val\) \[(\d+)\]\[\d+/\d+\] .*acc/top1', log)
    # Before the checkpoint and the validation of epochs 2, 4 and 6 (the last) only.
    assert [next(e for e in groups if e) for groups in events] == [
        '1', 'precise BN', '2', '2', '3', 'precise BN', '4', '4', '5', 'precise BN', '6', '6']
    assert log.count('precise BN: running statistics of 20 BN layers recomputed from 2 batches of '
                     '1 x 8 x 32px per GPU, averaged over 1 GPU(s)') == 3
    assert 'batch norm groups: batch 16: 2 groups of 8 in each process; batch 8: one group of 8' in log
    validations = [r for r in latest_scalars(tmp_path / 'work') if 'acc/top1' in r]
    assert [(r['step'], r['precise_bn_batches']) for r in validations] == [(2, 2), (4, 2), (6, 2)]


def test_two_processes_with_groups_across_ranks(two_rank_dataset: SyntheticDataset,
                                                tmp_path: Path) -> None:
    """dist_train.sh on 2 gloo processes with bn_base_size=2: the batches of 1 clip are normalised over
    both ranks (under DDP, backward included), precise BN at the end; both ranks agree."""
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', two_rank_dataset,
                                         hook='bn_base_size=2, precise_bn=2, trace=True')
    work_dir = tmp_path / 'work'
    proc = run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir)],
               PORT=str(free_port()), PYTHON=sys.executable)
    log = proc.stdout + proc.stderr
    assert ('batch 2: one group of 2 in each process; batch 1: groups of 2 over 2 neighbouring ranks'
            in log)
    assert 'normalise fewer than bn_base_size' not in log
    assert log.count('precise BN: running statistics of 20 BN layers recomputed from 2 batches of '
                     '1 x 8 x 32px per GPU, averaged over 2 GPU(s)') == 1
    traces = [read_trace(work_dir / f'multigrid_trace.rank{r}.jsonl') for r in (0, 1)]
    assert traces[0] == traces[1] and traces[0][-1]['event'] == 'end'
    assert 1 in {r.get('batch_size') for r in traces[0]}
