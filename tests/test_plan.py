"""The multigrid plan: PySlowFast's worked Kinetics example to the epoch, modes, and properties."""
from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmmultigrid.lr_curve import WARMUP_SCHEDULERS, LRCurve, parse_lr_schedulers
from mmmultigrid.plan import BaseShape, MultigridOptions, MultigridPlan, build_plan

# REFERENCE.md section 2: SlowFast R50 8x8 stepwise, 8 GPUs.
EXAMPLE_BASE = BaseShape(batch_size=8, clip_len=32, frame_interval=2, crop_size=224)
EXAMPLE_SCHEDULE = [dict(type='MultiStepLR', milestones=[94, 154, 196], gamma=0.1, by_epoch=True,
                         begin=0, end=239)]
EXAMPLE_ENDS = [73, 110, 142, 158, 205, 228, 248, 259, 291, 308, 322, 329, 343, 358]
EXAMPLE_LR = [8, 4, 2, 1, 0.8, 0.4, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01, 0.01, 0.001]
CYCLE = [(8, 8, 158), (4, 16, 158), (2, 16, 224), (1, 32, 224)]  # [B_rel, T, S]
SHORT_CYCLES = {  # long-cycle (T, S) -> per-GPU (batch, crop) of the short cycle
    (8, 158): [(128, 112), (64, 158), (64, 158)],
    (16, 158): [(64, 112), (32, 158), (32, 158)],
    (16, 224): [(64, 112), (32, 158), (16, 224)],
    (32, 224): [(32, 112), (16, 158), (8, 224)],
}


def example_plan(**options: Any) -> MultigridPlan:
    curve = parse_lr_schedulers(EXAMPLE_SCHEDULE, 239, 0.1)
    return build_plan(EXAMPLE_BASE, MultigridOptions(**options), curve, 239, world_size=8)


def test_worked_example_to_the_epoch() -> None:
    plan = example_plan()
    segments = plan.segments
    assert [s.epoch_begin for s in segments] == [0] + EXAMPLE_ENDS[:-1]
    assert [s.epoch_end for s in segments] == EXAMPLE_ENDS
    assert [s.lr_factor for s in segments] == pytest.approx(EXAMPLE_LR, rel=1e-12)
    assert [s.lr_stage for s in segments] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 2
    shapes = [(s.long_shape.batch_size // 8, s.long_shape.clip_len, s.long_shape.crop_size)
              for s in segments]
    assert shapes == CYCLE * 3 + [CYCLE[-1]] * 2
    for s in segments:
        key = (s.long_shape.clip_len, s.long_shape.crop_size)
        assert [(g.batch_size, g.crop_size) for g in s.shapes] == SHORT_CYCLES[key]
        assert {g.clip_len for g in s.shapes} == {s.long_shape.clip_len}  # only S varies
    assert plan.max_epochs == 358 and plan.baseline_max_epochs == 239
    assert plan.iteration_speedup == pytest.approx(3.42, abs=0.005)
    # Inside the three long cycles (before the 1.5x factor and fine-tuning): about 5.75x per epoch.
    cycles = segments[:12]
    relative_iters = sum(s.epochs * 8 / s.mean_batch_size for s in cycles)
    per_epoch = sum(s.epochs for s in cycles) / relative_iters
    assert per_epoch == pytest.approx(5.75, abs=0.05)


def test_worked_example_lr_follows_segments() -> None:
    plan = example_plan()
    for s in plan.segments:
        assert plan.lr_factor(s.epoch_begin, 0.5) == s.lr_factor  # no warmup in this schedule


def test_worked_example_json() -> None:
    data = example_plan().to_dict()
    assert data['max_epochs'] == 358
    assert [row['epoch_end'] for row in data['segments']] == EXAMPLE_ENDS
    assert data['segments'][0]['short_cycle'] == [
        {'batch_size': 128, 'crop_size': 112}, {'batch_size': 64, 'crop_size': 158},
        {'batch_size': 64, 'crop_size': 158}]


@pytest.mark.parametrize('long_cycle', [True, False])
@pytest.mark.parametrize('short_cycle', [True, False])
@pytest.mark.parametrize('schedule', ['step', 'cosine'])
def test_every_mode_makes_a_valid_plan(long_cycle: bool, short_cycle: bool, schedule: str) -> None:
    cfgs = EXAMPLE_SCHEDULE if schedule == 'step' else [
        dict(type='LinearLR', start_factor=0.1, begin=0, end=34, convert_to_iter_based=True),
        dict(type='CosineAnnealingLR', T_max=239, eta_min=0, begin=0, end=239)]
    options = MultigridOptions(long_cycle=long_cycle, short_cycle=short_cycle)
    plan = build_plan(EXAMPLE_BASE, options, parse_lr_schedulers(cfgs, 239, 0.1), 239, world_size=1)
    check_plan_invariants(plan)
    assert {len(s.shapes) for s in plan.segments} == {3 if short_cycle else 1}
    assert len({s.long_shape for s in plan.segments}) == (4 if long_cycle else 1)
    last = plan.segments[-1].long_shape
    assert (last.batch_size, last.clip_len, last.crop_size) == (8, 32, 224)  # ends at the base
    if not long_cycle:
        assert {s.batch_multiplier for s in plan.segments} == {1}
    if not (long_cycle or short_cycle):
        assert plan.iteration_speedup == pytest.approx(239 / plan.max_epochs)
    baseline, multigrid = plan.iterations(10_000)
    assert baseline > 0 and multigrid > 0


def test_long_cycle_only_batches() -> None:
    plan = example_plan(short_cycle=False)
    assert [s.long_shape.batch_size for s in plan.segments[:4]] == [64, 32, 16, 8]
    assert [s.epoch_end for s in plan.segments][-1] == plan.max_epochs


def test_iterations_are_exact() -> None:
    plan = example_plan()
    baseline, multigrid = plan.iterations(240_000)
    assert baseline == 239 * math.ceil(30_000 / 8)
    assert multigrid == sum(s.epochs * brute_force_batches(s.shapes, 30_000) for s in plan.segments)


def test_short_last_stage_keeps_fine_tuning() -> None:
    curve = parse_lr_schedulers([dict(type='MultiStepLR', milestones=[325, 328], begin=0, end=329)],
                                329, 0.1)
    plan = build_plan(BaseShape(1, 4, 1, 32), MultigridOptions(short_cycle=False, epoch_factor=1.0),
                      curve, 329)
    last = plan.segments[-1]
    assert (last.long_shape.clip_len, last.long_shape.crop_size) == (4, 32)
    assert last.lr_factor == pytest.approx(0.01)


# --- cosine: linear scaling and warmup by fraction of iterations ---------------------------------
COSINE = [dict(type='LinearLR', start_factor=0.1, begin=0, end=34, by_epoch=True,
               convert_to_iter_based=True),
          dict(type='CosineAnnealingLR', T_max=256, eta_min=0, begin=0, end=256, by_epoch=True)]


def cosine_plan() -> tuple[MultigridPlan, LRCurve]:
    curve = parse_lr_schedulers(COSINE, 256, 0.1)
    return build_plan(EXAMPLE_BASE, MultigridOptions(), curve, 256, world_size=8), curve


def test_cosine_lr_is_baseline_curve_times_batch_multiplier() -> None:
    plan, curve = cosine_plan()
    assert not plan.step_schedule
    for s in plan.segments:
        for progress in (0.0, 0.05, 0.3, 0.61, 0.99):
            assert plan.lr_factor(s.epoch_begin, progress) == pytest.approx(
                s.batch_multiplier * curve.factor(progress * 256), rel=1e-12)
    assert [s.batch_multiplier for s in plan.segments[:4]] == [8, 4, 2, 1]


def test_cosine_warmup_ends_at_the_baseline_fraction_of_iterations() -> None:
    plan, curve = cosine_plan()
    first = plan.segments[0]
    end = 34 / 256

    def warmup(progress: float) -> float:
        full = first.batch_multiplier * curve.factor(progress * 256, exclude=WARMUP_SCHEDULERS)
        return plan.lr_factor(first.epoch_begin, progress) / full

    assert warmup(0.0) == pytest.approx(0.1)
    assert warmup(end / 2) == pytest.approx(0.55)
    assert warmup(end - 1e-4) < 1 - 1e-4
    assert warmup(end) == pytest.approx(1.0, rel=1e-12)
    assert warmup(end + 0.1) == pytest.approx(1.0, rel=1e-12)


# --- properties over random valid inputs ----------------------------------------------------------
def brute_force_batches(shapes: Any, samples: int) -> int:
    """Take the short-cycle batches round robin while the next one still fits."""
    count, left = 0, samples
    while left >= shapes[count % len(shapes)].batch_size:
        left -= shapes[count % len(shapes)].batch_size
        count += 1
    return count


def check_plan_invariants(plan: MultigridPlan) -> None:
    base = plan.base
    base_volume = base.batch_size * base.clip_len * base.crop_size**2
    assert plan.segments and plan.segments[0].epoch_begin == 0
    for before, after in zip(plan.segments, plan.segments[1:]):
        assert before.epoch_end == after.epoch_begin
    assert all(s.epochs > 0 for s in plan.segments)
    assert plan.segments[-1].epoch_end == plan.max_epochs
    for s in plan.segments:
        assert s.shapes[-1] == s.long_shape
        assert s.lr_factor > 0 and s.batch_multiplier >= 1
        assert s.long_shape.batch_size == base.batch_size * s.batch_multiplier
        for g in s.shapes:
            assert g.batch_size > 0 and g.clip_len > 0 and g.crop_size > 0
            assert g.clip_len == s.long_shape.clip_len <= base.clip_len
            assert g.crop_size <= s.long_shape.crop_size <= base.crop_size
            assert g.batch_size % base.batch_size == 0
            # The batch multiplier is m = round(1/r) with r = t*s^2 / (T*S^2) <= 1, so
            # |m - 1/r| <= 1/2 and the volume ratio m*r is within r/2 of 1.
            r = g.clip_len * g.crop_size**2 / (base.clip_len * base.crop_size**2)
            assert abs(g.volume / base_volume - 1) <= r / 2 + 1e-12
    assert plan.iteration_speedup > 0


@st.composite
def plan_inputs(draw: st.DrawFn) -> dict[str, Any]:
    max_epochs = draw(st.integers(2, 400))
    schedule: list[dict[str, Any]] = []
    if draw(st.booleans()):
        schedule.append(dict(type='LinearLR', start_factor=draw(st.floats(0.01, 1.0)), begin=0,
                             end=draw(st.integers(1, max_epochs)), by_epoch=True,
                             convert_to_iter_based=draw(st.booleans())))
    if draw(st.booleans()):
        milestones = draw(st.lists(st.integers(1, max_epochs - 1), min_size=1, max_size=5,
                                   unique=True))
        schedule.append(dict(type='MultiStepLR', milestones=sorted(milestones),
                             gamma=draw(st.sampled_from([0.1, 0.5])), begin=0, end=max_epochs))
    else:
        schedule.append(dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0, begin=0,
                             end=max_epochs))
    return dict(
        base=BaseShape(draw(st.integers(1, 32)), draw(st.integers(4, 64)), draw(st.integers(1, 4)),
                       draw(st.integers(32, 320))),
        options=MultigridOptions(long_cycle=draw(st.booleans()), short_cycle=draw(st.booleans()),
                                 epoch_factor=draw(st.floats(0.5, 3.0))),
        lr_curve=parse_lr_schedulers(schedule, max_epochs, 0.1),
        max_epochs=max_epochs,
        world_size=draw(st.integers(1, 16)))


@settings(max_examples=1000, deadline=None)
@given(plan_inputs())
def test_plan_properties(inputs: dict[str, Any]) -> None:
    plan = build_plan(**inputs)
    check_plan_invariants(plan)
    assert build_plan(**inputs) == plan  # deterministic
    stretched = inputs['max_epochs'] * inputs['options'].epoch_factor
    # Segment ends are rounded (cumulative sums with the long cycle), the total included.
    assert abs(plan.max_epochs - stretched) <= 0.5 + 1e-9
    assert plan.baseline_max_epochs == inputs['max_epochs']
    assert plan.world_size == inputs['world_size']


@settings(max_examples=500, deadline=None)
@given(plan_inputs(), st.integers(0, 5000))
def test_batches_per_epoch_matches_round_robin(inputs: dict[str, Any], samples: int) -> None:
    plan = build_plan(**inputs)
    for s in plan.segments:
        assert s.batches_per_epoch(samples) == brute_force_batches(s.shapes, samples)
