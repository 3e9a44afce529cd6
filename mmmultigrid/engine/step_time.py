"""Seconds per training iteration at every grid shape, and the wall-clock speed-up they predict.

Multigrid's saving is counted in iterations; a user gets wall-clock, and an iteration's cost differs
between grid shapes (kernels at small crops and large batches are less efficient on some devices).
:func:`time_train_steps` times forward + backward + optimizer step of the per-GPU batch at each shape on
the model's device, in the optimizer wrapper's context (autocast with ``AmpOptimWrapper``, as in
training), on random inputs; the shapes are timed round-robin so that load from other processes falls on
all of them alike, and the model's and optimizer's state are restored afterwards.
:func:`time_precise_bn_steps` times precise BN's forward pass (no backward). :func:`measure_plan` times
the plan's grid shapes and the base shape, :func:`predicted_seconds` multiplies each shape's iterations
by its median time, and :func:`format_step_times` tabulates both with the predicted speed-up next to the
iteration ratio. The loader is assumed to keep up (``loader_check`` tells whether it does).
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper, build_optim_wrapper

from mmmultigrid.plan import GridShape, MultigridPlan
from mmmultigrid.models.segments import clip_batch


@dataclass(frozen=True)
class StepTimes:
    """Median seconds per training iteration at each shape (the base shape included), timed on
    ``device`` over ``steps`` iterations per shape."""

    seconds: dict[GridShape, float]
    device: str
    steps: int

    def to_dict(self) -> dict:
        return dict(device=self.device, steps=self.steps,
                    shapes=[dict(batch_size=s.batch_size, clip_len=s.clip_len, crop_size=s.crop_size,
                                 seconds=t) for s, t in self.seconds.items()])

    @classmethod
    def from_dict(cls, data: dict) -> StepTimes:
        seconds = {GridShape(r['batch_size'], r['clip_len'], r['crop_size']): r['seconds']
                   for r in data['shapes']}
        return cls(seconds, data['device'], data['steps'])


def build_trainable(cfg, device: torch.device) -> tuple[torch.nn.Module, OptimWrapper, int]:
    """The config's recognizer on ``device`` in training mode, initialised without pretrained weights
    (nothing is downloaded), its optimizer wrapper (``optim_wrapper``, AMP included) and its number of
    classes."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    backbone = cfg.model.get('backbone', {})
    for key, value in (('pretrained', None), ('pretrained2d', False)):
        if key in backbone:
            backbone[key] = value
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    model.to(device).train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper), cfg.model.cls_head.num_classes


def base_grid_shape(plan: MultigridPlan) -> GridShape:
    """The baseline's per-GPU batch shape."""
    return GridShape(plan.base.batch_size, plan.base.clip_len, plan.base.crop_size)


def random_batch(model: torch.nn.Module, shape: GridShape,
                 num_classes: int) -> tuple[torch.Tensor, list]:
    """Random normalised inputs in the recognizer's layout (:func:`~mmmultigrid.models.segments.clip_batch`)
    on its device, and data samples with random labels."""
    from mmaction.structures import ActionDataSample
    inputs = clip_batch(model, shape.batch_size, shape.clip_len, shape.crop_size,
                        torch.Generator().manual_seed(0))
    labels = torch.randint(num_classes, (shape.batch_size, )).tolist()
    return inputs, [ActionDataSample().set_gt_label(label) for label in labels]


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so that timers read its end."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_step(model: torch.nn.Module, optim_wrapper: OptimWrapper,
               batch: tuple[torch.Tensor, list]) -> tuple[float, float | None]:
    """Seconds of one forward + backward + optimizer step, and its peak GPU memory in MiB (CUDA only)."""
    device = batch[0].device
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    with optim_wrapper.optim_context(model):
        losses = model(*batch, mode='loss')
    optim_wrapper.update_params(sum(losses.values()))
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else None
    return seconds, peak


def time_train_steps(model: torch.nn.Module, optim_wrapper: OptimWrapper,
                     shapes: Sequence[GridShape], num_classes: int, steps: int, warmup: int = 1,
                     restore: bool = True) -> tuple[list[list[float]], list[list[float]]]:
    """(seconds, peak MiB) of each timed iteration at each of ``shapes``: ``warmup`` untimed rounds, then
    ``steps`` timed rounds of one iteration per shape. With ``restore`` the model's state (weights and
    batch-norm buffers) and the optimizer's are put back afterwards, so training is unchanged."""
    if steps < 1 or warmup < 0:
        raise ValueError(f'need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}')
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optim_wrapper.state_dict())
             ) if restore else None
    training = model.training
    model.train()
    times: list[list[float]] = [[] for _ in shapes]
    peaks: list[list[float]] = [[] for _ in shapes]
    try:
        for round_ in range(warmup + steps):
            for i, shape in enumerate(shapes):
                seconds, peak = train_step(model, optim_wrapper, random_batch(model, shape, num_classes))
                if round_ >= warmup:
                    times[i].append(seconds)
                    if peak is not None:
                        peaks[i].append(peak)
    finally:
        model.train(training)
        optim_wrapper.zero_grad()
        if saved is not None:
            model.load_state_dict(saved[0])
            optim_wrapper.load_state_dict(saved[1])
    return times, peaks


def time_precise_bn_steps(model: torch.nn.Module, shape: GridShape, num_classes: int, steps: int,
                          warmup: int = 1) -> list[float]:
    """Seconds of each timed precise-BN batch at ``shape``: the training forward without gradients, as
    :func:`~mmmultigrid.models.precise_bn.update_bn_stats` runs it (BN layers updating their statistics,
    no backward). The model's state and mode are put back afterwards."""
    if steps < 1 or warmup < 0:
        raise ValueError(f'need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}')
    saved, training = copy.deepcopy(model.state_dict()), model.training
    batch = random_batch(model, shape, num_classes)
    device = batch[0].device
    model.train()
    times = []
    try:
        with torch.no_grad():
            for round_ in range(warmup + steps):
                sync(device)
                start = time.perf_counter()
                model(*batch, mode='loss')
                sync(device)
                if round_ >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(training)
        model.load_state_dict(saved)
    return times


def plan_shapes(plan: MultigridPlan) -> list[GridShape]:
    """The base shape, then every grid shape of the plan in order of first use."""
    base = base_grid_shape(plan)
    return [base] + [s for s in plan.shape_segments() if s != base]


def measure_plan(model: torch.nn.Module, optim_wrapper: OptimWrapper, plan: MultigridPlan,
                 num_classes: int, steps: int, warmup: int = 1) -> StepTimes:
    """Median seconds per iteration at the base shape and at every grid shape of ``plan``."""
    shapes = plan_shapes(plan)
    times, _ = time_train_steps(model, optim_wrapper, shapes, num_classes, steps, warmup)
    device = next(model.parameters()).device
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    return StepTimes({s: statistics.median(t) for s, t in zip(shapes, times)}, name, steps)


def predicted_seconds(plan: MultigridPlan, times: StepTimes, samples: int) -> tuple[float, float]:
    """(baseline, multigrid) training seconds per rank for ``samples`` clips per rank an epoch: the
    iterations at each shape times its measured seconds."""
    baseline_iters, _ = plan.rank_iterations(samples)
    multigrid = sum(n * times.seconds[shape] for shape, n in plan.shape_iterations(samples).items())
    return baseline_iters * times.seconds[base_grid_shape(plan)], multigrid


def format_step_times(plan: MultigridPlan, times: StepTimes, samples: int | None) -> str:
    """Table of seconds per iteration and cost per clip against the base shape, per shape; with
    ``samples`` (clips per rank an epoch) also each shape's iterations and share of the time, and the
    predicted wall-clock speed-up next to the iteration-count prediction."""
    base = base_grid_shape(plan)
    per_clip_base = times.seconds[base] / base.batch_size
    iterations = plan.shape_iterations(samples) if samples is not None else {}
    baseline_s, multigrid_s = predicted_seconds(plan, times, samples) if samples is not None else (0, 0)
    head = f"{'B x T x S':<20} {'s/iter':>8} {'cost/clip vs base':>17}"
    lines = [f'Measured step time on {times.device} (median of {times.steps} forward + backward + '
             'optimizer steps per shape, random inputs):',
             head + (f" {'iterations':>10} {'time share':>10}" if samples is not None else '')]
    for shape, seconds in times.seconds.items():
        name = f'{shape.batch_size} x {shape.clip_len} x {shape.crop_size}'
        if shape == base:
            name += ' (base)'
        row = f'{name:<20} {seconds:>8.3f} {seconds / shape.batch_size / per_clip_base:>16.2f}x'
        if samples is not None:
            n = iterations.get(shape, 0)
            row += f' {n:>10d} {100 * n * seconds / multigrid_s:>9.1f}%' if n else f" {'baseline':>10}"
        lines.append(row)
    if samples is not None:
        baseline_iters, multigrid_iters = plan.rank_iterations(samples)
        lines.append(f'Predicted training time per GPU: baseline {baseline_s:.0f} s, multigrid '
                     f'{multigrid_s:.0f} s: {baseline_s / multigrid_s:.2f}x faster in wall-clock '
                     f'({baseline_iters / multigrid_iters:.2f}x fewer iterations), if the loader keeps up')
    return '\n'.join(lines)
