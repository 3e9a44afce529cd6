"""MultigridSampler over a real mmengine DefaultSampler: the invariants of its docstring."""
from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.hooks import DistSamplerSeedHook
from torch.utils.data import DataLoader

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, build_plan
from mmmultigrid.data.sampler import GridIndex, MultigridSampler


class SizedDataset:
    """A dataset of ``n`` items that returns its index: only its length matters to the samplers."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def make_plan(batch_size: int = 2, max_epochs: int = 10, milestones: tuple[int, ...] = (4, 7),
              world_size: int = 2, **options) -> MultigridPlan:
    """A small step-LR plan on a (B, T=8, I=2, S=32) base shape."""
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=list(milestones), gamma=0.1),
                                max_epochs, 0.1)
    return build_plan(BaseShape(batch_size, 8, 2, 32), MultigridOptions(**options), curve, max_epochs,
                      world_size)


def default_sampler(length: int, rank: int = 0, world_size: int = 1, round_up: bool = True,
                    seed: int = 0) -> DefaultSampler:
    """A shuffling DefaultSampler that believes it is ``rank`` of ``world_size``."""
    with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(rank, world_size)):
        sampler = DefaultSampler(SizedDataset(length), shuffle=True, seed=seed, round_up=round_up)
    assert (sampler.rank, sampler.world_size) == (rank, world_size)
    return sampler


def make_sampler(length: int, plan: MultigridPlan | None, rank: int = 0, world_size: int = 1,
                 round_up: bool = True, seed: int = 0, batch_size: int | None = None
                 ) -> MultigridSampler:
    """A MultigridSampler (batch size: the plan's unless given) over :func:`default_sampler`."""
    inner = default_sampler(length, rank, world_size, round_up, seed)
    sampler = MultigridSampler(inner, batch_size if batch_size is not None else plan.base.batch_size)
    if plan is not None:
        sampler.set_plan(plan)
    return sampler


def run_epoch(sampler: MultigridSampler, epoch: int) -> list[list[GridIndex]]:
    """Set the epoch the way DistSamplerSeedHook does (on the wrapped sampler) and iterate once."""
    sampler.sampler.set_epoch(epoch)
    return list(sampler)


def check_epoch(sampler: MultigridSampler, epoch: int) -> list[GridShape]:
    """Iterate one epoch, assert the per-rank invariants and return the batch shapes."""
    sampler.sampler.set_epoch(epoch)
    expected_len = len(sampler)
    batches = list(sampler)
    assert len(batches) == expected_len
    planned = sampler.plan.epoch_shapes(epoch)
    used: list[int] = []
    for i, batch in enumerate(batches):
        shape = planned[i % len(planned)]
        assert len(batch) == shape.batch_size
        assert all(type(index) is GridIndex and index.shape == shape for index in batch)
        used += [int(index) for index in batch]
    assert len(used) == len(set(used)), 'an index was used twice in one epoch on one rank'
    assert all(0 <= index < len(sampler.sampler.dataset) for index in used)
    # Only the incomplete last batch is dropped.
    left = sampler.samples_per_rank - len(used)
    assert 0 <= left < planned[len(batches) % len(planned)].batch_size
    return [batch[0].shape for batch in batches]


def check_ranks(length: int, world_size: int, round_up: bool, plan: MultigridPlan,
                epochs: list[int], seed: int = 0) -> None:
    """Every rank yields the same count and sequence of batch shapes, for each epoch."""
    samplers = [make_sampler(length, plan, rank, world_size, round_up, seed)
                for rank in range(world_size)]
    for epoch in epochs:
        per_rank = [check_epoch(sampler, epoch) for sampler in samplers]
        assert all(shapes == per_rank[0] for shapes in per_rank), f'epoch {epoch}: ranks disagree'
        assert len({len(sampler) for sampler in samplers}) == 1


@pytest.mark.parametrize('round_up', [True, False])
@pytest.mark.parametrize('length,world_size,batch_size', [(101, 3, 2), (97, 8, 2), (64, 4, 2),
                                                          (13, 2, 1), (7, 2, 1), (5, 8, 1)])
def test_ranks_agree_on_every_epoch(length: int, world_size: int, batch_size: int,
                                    round_up: bool) -> None:
    plan = make_plan(batch_size, world_size=world_size)
    check_ranks(length, world_size, round_up, plan, list(range(plan.max_epochs + 1)))


def test_len_matches_batches_across_long_cycle_changes() -> None:
    plan = make_plan()
    sampler = make_sampler(203, plan)
    lengths, seen = [], set()
    for epoch in range(plan.max_epochs):
        shapes = check_epoch(sampler, epoch)
        lengths.append(len(shapes))
        seen.update(shapes)
    assert seen == {shape for segment in plan.segments for shape in segment.shapes}
    # The epoch length follows the segment: larger batches, fewer iterations.
    first, last = plan.segments[0], plan.segments[-1]
    assert lengths[first.epoch_begin] == first.batches_per_epoch(203) < lengths[-1]
    assert lengths[-1] == last.batches_per_epoch(203)


def test_same_seed_same_batches_other_seed_other_order() -> None:
    plan = make_plan()
    a, b, c = (make_sampler(120, plan, seed=seed) for seed in (3, 3, 4))
    for epoch in (0, 5):
        batches = run_epoch(a, epoch)
        assert batches == run_epoch(b, epoch)
        assert [x.shape for x in batches[0]] == [x.shape for x in run_epoch(c, epoch)[0]]
        assert [int(x) for x in batches[0]] != [int(x) for x in run_epoch(c, epoch)[0]]


def test_epoch_reaches_sampler_through_dist_sampler_seed_hook() -> None:
    """DistSamplerSeedHook seeds ``batch_sampler.sampler``; the batch sampler must follow it."""
    plan = make_plan()
    batch_sampler = make_sampler(150, plan)
    loader = DataLoader(SizedDataset(150), batch_sampler=batch_sampler, collate_fn=list)
    hook = DistSamplerSeedHook()
    for epoch, segment in ((0, plan.segments[0]), (plan.segments[2].epoch_begin, plan.segments[2])):
        hook.before_train_epoch(SimpleNamespace(epoch=epoch, train_loop=SimpleNamespace(
            dataloader=loader)))
        assert batch_sampler.epoch == epoch
        batches = list(loader)
        assert len(batches) == len(loader) == segment.batches_per_epoch(150)
        assert [len(b) for b in batches[:len(segment.shapes)]] == [
            s.batch_size for s in segment.shapes]


def test_grid_index_survives_pickling() -> None:
    shape = GridShape(16, 4, 23)
    index = GridIndex(41, shape)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps([index], protocol=protocol))[0]
        assert type(restored) is GridIndex and restored == 41 and restored.shape == shape
    assert copy.deepcopy(index).shape == shape
    assert repr(index) == 'GridIndex(41, B=16, T=4, S=23)'
    assert [0, 1, 2][GridIndex(1, shape)] == 1  # still usable as a list index


def test_rejects_non_epoch_sampler() -> None:
    with pytest.raises(TypeError, match='InfiniteSampler'):
        MultigridSampler(InfiniteSampler(SizedDataset(10), seed=0), 2)


@pytest.mark.parametrize('batch_size', [0, -2, True, 2.0, '2', None])
def test_rejects_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(ValueError, match='batch_size'):
        MultigridSampler(default_sampler(10), batch_size)


def test_rejects_plan_for_other_batch_size() -> None:
    sampler = make_sampler(10, None, batch_size=4)
    with pytest.raises(ValueError, match='batch_size=2'):
        sampler.set_plan(make_plan(batch_size=2))


def test_iterating_without_plan_names_the_hook() -> None:
    sampler = make_sampler(10, None, batch_size=2)
    assert len(sampler) == 5  # the baseline count, for the loop's initial length
    with pytest.raises(RuntimeError, match='MultigridHook'):
        next(iter(sampler))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 400), world_size=st.integers(1, 8), round_up=st.booleans(),
       batch_size=st.integers(1, 4), cycles=st.sampled_from([(True, True), (True, False),
                                                            (False, True)]),
       max_epochs=st.integers(4, 40), data=st.data())
def test_invariants_hold_for_random_setups(length: int, world_size: int, round_up: bool,
                                           batch_size: int, cycles: tuple[bool, bool],
                                           max_epochs: int, data: st.DataObject) -> None:
    milestones = data.draw(st.lists(st.integers(1, max_epochs - 1), min_size=1, max_size=3,
                                    unique=True).map(lambda m: tuple(sorted(m))))
    plan = make_plan(batch_size, max_epochs, milestones, world_size, long_cycle=cycles[0],
                     short_cycle=cycles[1])
    # The first epoch of every segment, and one past the end of the plan.
    epochs = sorted({s.epoch_begin for s in plan.segments} | {plan.max_epochs})
    check_ranks(length, world_size, round_up, plan, epochs, seed=data.draw(st.integers(0, 99)))
