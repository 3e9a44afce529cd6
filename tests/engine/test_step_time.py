"""mmmultigrid.engine.step_time: timing training iterations per grid shape leaves training unchanged, and the
predicted training time is each shape's iterations times its seconds."""
from __future__ import annotations

import torch
from mmengine.config import Config

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.plan import GridShape
from mmmultigrid.engine.step_time import (StepTimes, base_grid_shape, build_trainable, format_step_times,
                                   measure_plan, plan_shapes, predicted_seconds, time_precise_bn_steps,
                                   time_train_steps)
from runs import REPO

CONFIG = REPO / 'configs' / 'synthetic_r3d_multigrid.py'


def tiny_config() -> Config:
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.update(base_channels=2, depth=18)
    cfg.model.cls_head.update(in_channels=16, num_classes=3)
    cfg.train_dataloader.batch_size = 2
    return cfg


def test_timing_restores_weights_buffers_and_optimizer() -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    model, optim_wrapper, num_classes = build_trainable(cfg, torch.device('cpu'))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = [GridShape(2, 4, 16), GridShape(4, 2, 16)]
    times, peaks = time_train_steps(model, optim_wrapper, shapes, num_classes, steps=2)
    assert [len(t) for t in times] == [2, 2] and all(s > 0 for t in times for s in t)
    assert peaks == [[], []]  # peak memory is measured on CUDA only
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert optim_wrapper.optimizer.state_dict()['state'] == {}
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    # without restore the same steps do train
    time_train_steps(model, optim_wrapper, shapes[:1], num_classes, steps=1, warmup=0, restore=False)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_precise_bn_timing_leaves_statistics_and_mode_unchanged() -> None:
    cfg = tiny_config()
    model, _, num_classes = build_trainable(cfg, torch.device('cpu'))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    times = time_precise_bn_steps(model, GridShape(2, 4, 16), num_classes, steps=3)
    assert len(times) == 3 and all(t > 0 for t in times) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_measure_plan_times_the_base_and_every_grid_shape() -> None:
    cfg = tiny_config()
    plan = plan_from_config(cfg, 1)
    model, optim_wrapper, num_classes = build_trainable(cfg, torch.device('cpu'))
    times = measure_plan(model, optim_wrapper, plan, num_classes, steps=1, warmup=0)
    assert list(times.seconds) == plan_shapes(plan)
    assert next(iter(times.seconds)) == base_grid_shape(plan) == GridShape(2, 16, 64)
    assert set(plan.shape_segments()) <= set(times.seconds) and times.device == 'cpu'
    assert StepTimes.from_dict(times.to_dict()) == times


def test_prediction_is_iterations_times_seconds() -> None:
    plan = plan_from_config(tiny_config(), 1)
    samples = 96
    # every shape costing the same: the wall-clock speed-up is the iteration ratio
    flat = StepTimes({s: 0.5 for s in plan_shapes(plan)}, 'cpu', 1)
    baseline_s, multigrid_s = predicted_seconds(plan, flat, samples)
    baseline_iters, multigrid_iters = plan.rank_iterations(samples)
    assert (baseline_s, multigrid_s) == (0.5 * baseline_iters, 0.5 * multigrid_iters)
    # the base shape twice as dear: the baseline's time doubles, multigrid's grows by its base share
    base = base_grid_shape(plan)
    dear = StepTimes({s: 1.0 if s == base else 0.5 for s in plan_shapes(plan)}, 'cpu', 1)
    at_base = plan.shape_iterations(samples)[base]
    assert predicted_seconds(plan, dear, samples) == (baseline_iters, 0.5 * (multigrid_iters + at_base))
    table = format_step_times(plan, dear, samples)
    assert f'{baseline_iters / multigrid_iters:.2f}x fewer iterations' in table
    assert '2 x 16 x 64 (base)' in table and 'cost/clip vs base' in table
    assert 'Predicted' not in format_step_times(plan, dear, None)
