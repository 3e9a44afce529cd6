"""Will the loader keep up? Its work per iteration at every grid shape, measured before training and
watched during it.

Multigrid keeps the model's cost per iteration about constant, but the loader must deliver B/B0 times
the base shape's clips per iteration (up to 16x). With videos each clip costs about a base clip, with
rawframes and their copies about (T/T0)(S/S0)^2 of one. At start-up :func:`measure_loader_costs`
loads a few clips per grid shape in this process and :func:`loader_cost_warnings` names the shapes
whose work per iteration exceeds :data:`LOADER_COST_LIMIT` times the base shape's; during training
:class:`LoaderWatch` times the first iterations at each shape and says, from the measured data wait,
how many workers would keep up.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mmmultigrid.plan import GridShape, MultigridPlan, describe_use
from mmmultigrid.data.sampler import GridIndex

#: Loader work per iteration at a grid shape, over the base shape's, above which start-up warns.
LOADER_COST_LIMIT = 2.0
#: Share of iteration time spent waiting for data at a grid shape above which training warns.
DATA_WAIT_LIMIT = 0.1
ADVICE = ('or rawframes with the smaller copies the grid shapes need (tools/extract_frames.py --config, '
          'ScaledRawFrameDecode in the train pipeline)')


def workers_for(workers: int, factor: float) -> int:
    """Workers that do ``factor`` times the work of ``workers`` (at least one) in the same time."""
    return math.ceil(max(workers, 1) * factor - 1e-6)


@dataclass(frozen=True)
class LoaderCost:
    """One grid shape's loading cost: seconds per clip, and per iteration relative to the base shape."""

    shape: GridShape
    seconds_per_clip: float
    cost_vs_base: float


def measure_loader_costs(dataset, plan: MultigridPlan, samples: int) -> list[LoaderCost]:
    """Load ``samples`` clips (after one warm-up clip) at every grid shape and the base shape in this
    process, as a loader worker would, and return their costs, cheapest clips first.

    The random states of ``random``, numpy and torch are restored afterwards, so training draws what it
    would have drawn without the measurement.
    """
    if samples < 1:
        raise ValueError(f'samples must be >= 1, got {samples!r}')
    base = GridShape(plan.base.batch_size, plan.base.clip_len, plan.base.crop_size)
    shapes = sorted(set(plan.shape_segments()) | {base},
                    key=lambda g: (g.clip_len * g.crop_size**2, g.batch_size))
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    step = max(1, len(dataset) // (samples + 1))
    seconds = {}
    try:
        for shape in shapes:
            dataset[GridIndex(0, shape)]  # builds the shape's pipeline, opens the first file
            start = time.perf_counter()
            for i in range(1, samples + 1):
                dataset[GridIndex((i * step) % len(dataset), shape)]
            seconds[shape] = (time.perf_counter() - start) / samples
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    per_base_batch = seconds[base] * base.batch_size
    return [LoaderCost(s, seconds[s], seconds[s] * s.batch_size / per_base_batch) for s in shapes]


def base_cost(costs: Sequence[LoaderCost], plan: MultigridPlan) -> LoaderCost:
    """The cost at the plan's base shape."""
    b = plan.base
    return next(c for c in costs if c.shape == GridShape(b.batch_size, b.clip_len, b.crop_size))


def format_loader_costs(costs: Sequence[LoaderCost], plan: MultigridPlan, workers: int) -> str:
    """A table: per grid shape the ms per clip, clips/s with ``workers`` and the cost vs base."""
    header = ('batch/GPU', 'T x S', 'ms per clip', f'clips/s ({workers} workers)', 'clips vs base',
              'loader work per iteration vs base')
    rows = [(str(c.shape.batch_size), f'{c.shape.clip_len} x {c.shape.crop_size}',
             f'{1000 * c.seconds_per_clip:.1f}', f'{max(workers, 1) / c.seconds_per_clip:.0f}',
             f'{c.shape.batch_size / plan.base.batch_size:.0f}x', f'{c.cost_vs_base:.2f}x')
            for c in costs]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ['Loader cost per grid shape (clips loaded in the main process)',
             '  '.join(c.ljust(w) for c, w in zip(header, widths)).rstrip(),
             '  '.join('-' * w for w in widths)]
    return '\n'.join(lines + ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                              for r in rows])


def loader_cost_warnings(plan: MultigridPlan, costs: Sequence[LoaderCost], workers: int,
                         limit: float = LOADER_COST_LIMIT) -> list[str]:
    """One message per grid shape whose loader work per iteration exceeds ``limit`` x the base's."""
    uses = plan.shape_segments()
    base_clip = base_cost(costs, plan).seconds_per_clip
    messages = []
    for c in costs:
        if c.cost_vs_base <= limit or c.shape not in uses:
            continue
        messages.append(
            f'{describe_use(c.shape, uses[c.shape])}: the loader does {c.cost_vs_base:.1f}x the base '
            f"shape's work per iteration ({c.shape.batch_size} clips of {1000 * c.seconds_per_clip:.1f}"
            f' ms against {plan.base.batch_size} of {1000 * base_clip:.1f} ms); if it just keeps up '
            'with the baseline, training will wait for data there: use at least '
            f'{workers_for(workers, c.cost_vs_base)} workers (train_dataloader.num_workers, now '
            f'{workers}) {ADVICE}')
    return messages


@dataclass
class LoaderWatch:
    """Data wait over the first iterations at each grid shape, and what would keep the loader up.

    Per shape, the first ``skip`` iterations (workers starting, pipelines being built) are ignored and
    the next ``window`` timed: data wait (before the iteration starts) and compute (the iteration).
    When data wait exceeds ``limit`` of the time, :meth:`iteration_ended` returns a message, once per
    shape: the loader delivers N = B / time clips/s, the model trains M = B / compute, and
    ceil(workers x M / N) workers would keep up.
    """

    workers: int
    skip: int = 1
    window: int = 4
    limit: float = DATA_WAIT_LIMIT
    _seen: dict[GridShape, list[float]] = field(default_factory=dict)
    _last_end: float | None = None
    _started: float | None = None

    def epoch_started(self, now: float) -> None:
        self._last_end = now

    def iteration_started(self, now: float) -> None:
        self._started = now

    def iteration_ended(self, shape: GridShape, now: float) -> str | None:
        if self._last_end is None or self._started is None:
            self._last_end = now
            return None
        wait, total = self._started - self._last_end, now - self._last_end
        self._last_end = now
        record = self._seen.setdefault(shape, [0, 0.0, 0.0])  # iterations, wait, total
        record[0] += 1
        if record[0] <= self.skip:
            return None
        record[1] += wait
        record[2] += total
        if record[0] != self.skip + self.window or record[1] <= self.limit * record[2]:
            return None
        delivered = shape.batch_size * self.window / record[2]
        trained = shape.batch_size * self.window / max(record[2] - record[1], 1e-9)
        return (f'grid shape {shape.batch_size} x {shape.clip_len} x {shape.crop_size}: the loader '
                f'delivers {delivered:.1f} clips/s, the model trains {trained:.1f} clips/s at this shape '
                f'(waiting for data {100 * record[1] / record[2]:.0f}% of the time): use at least '
                f'{workers_for(self.workers, trained / delivered)} workers '
                f'(train_dataloader.num_workers, now {self.workers}) {ADVICE}')
