"""The multigrid schedule (Wu et al., CVPR 2020), computed once as a plain object.

Pure Python: no torch, no mmengine. :func:`build_plan` turns the baseline recipe (base shape and LR
schedule, see :mod:`mmmultigrid.baseline`) and the :class:`MultigridOptions` into a
:class:`MultigridPlan`: segments of constant (long-cycle shape, LR factor), each with its short-cycle
shapes. The sampler, the pipeline and the hook all read this one object.

Arithmetic follows PySlowFast's ``multigrid.py`` (the worked Kinetics example reproduces its epochs and LR
factors exactly), with its defects fixed: long-cycle-only mode works, warmup is stretched by iteration
fraction, smooth (cosine) schedules keep the batch scaling.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Sequence

from mmmultigrid.lr_curve import STEP_SCHEDULERS, WARMUP_SCHEDULERS, LRCurve, step_milestones

SQRT_HALF = 0.5**0.5
DEFAULT_LONG_CYCLE_FACTORS = ((0.25, SQRT_HALF), (0.5, SQRT_HALF), (0.5, 1.0), (1.0, 1.0))
DEFAULT_SHORT_CYCLE_FACTORS = (0.5, SQRT_HALF)


@dataclass(frozen=True)
class MultigridOptions:
    """Options of the method; the keyword arguments of ``MultigridHook`` with the same names.

    Args:
        long_cycle: Vary (T, S) over epochs, scaling the batch to keep B*T*S^2 constant.
        short_cycle: Vary S every iteration (S0/2, S0/sqrt2, S_long), scaling the batch likewise.
        long_cycle_factors: ``(t, s)`` factors of the base (T, S), cheapest first.
        short_cycle_factors: Spatial factors of the base crop for the short cycle, smallest first.
        epoch_factor: Total epochs relative to the baseline's ``max_epochs``.
        bn_base_size: Clips per batch-norm statistics group.
        cycle_milestones: Baseline epochs where one long cycle ends and the next begins, the last one
            starting the fine-tuning phase. Default: the MultiStepLR milestones, or for smooth schedules
            quarters of ``max_epochs``.
    """

    long_cycle: bool = True
    short_cycle: bool = True
    long_cycle_factors: tuple[tuple[float, float], ...] = DEFAULT_LONG_CYCLE_FACTORS
    short_cycle_factors: tuple[float, ...] = DEFAULT_SHORT_CYCLE_FACTORS
    epoch_factor: float = 1.5
    bn_base_size: int = 8
    cycle_milestones: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ('long_cycle', 'short_cycle'):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f'MultigridHook.{name} must be True or False, '
                                f'got {getattr(self, name)!r}')
        try:
            long_factors = tuple((float(t), float(s)) for t, s in self.long_cycle_factors)
        except (TypeError, ValueError):
            raise TypeError('MultigridHook.long_cycle_factors must be a list of (t, s) pairs, '
                            f'got {self.long_cycle_factors!r}') from None
        if not long_factors:
            raise ValueError('MultigridHook.long_cycle_factors must not be empty')
        for t, s in long_factors:
            if not (0 < t <= 1 and 0 < s <= 1):
                raise ValueError(f'MultigridHook.long_cycle_factors entry ({t:g}, {s:g}) is out of range:'
                                 ' each factor must be in (0, 1]')
        try:
            short_factors = tuple(float(f) for f in self.short_cycle_factors)
        except (TypeError, ValueError):
            raise TypeError('MultigridHook.short_cycle_factors must be a list of numbers, '
                            f'got {self.short_cycle_factors!r}') from None
        if not short_factors:
            raise ValueError('MultigridHook.short_cycle_factors must not be empty')
        for f in short_factors:
            if not 0 < f < 1:
                raise ValueError(f'MultigridHook.short_cycle_factors entry {f:g} is out of range: each '
                                 'factor must be in (0, 1)')
        if isinstance(self.epoch_factor, bool) or not isinstance(self.epoch_factor, (int, float)):
            raise TypeError(f'MultigridHook.epoch_factor must be a number, got {self.epoch_factor!r}')
        if not self.epoch_factor > 0:
            raise ValueError(f'MultigridHook.epoch_factor must be > 0, got {self.epoch_factor!r}')
        if isinstance(self.bn_base_size, bool) or not isinstance(self.bn_base_size, int):
            raise TypeError(f'MultigridHook.bn_base_size must be an int, got {self.bn_base_size!r}')
        if self.bn_base_size < 1:
            raise ValueError(f'MultigridHook.bn_base_size must be >= 1, got {self.bn_base_size!r}')
        milestones = self.cycle_milestones
        if milestones is not None:
            milestones = tuple(int(m) for m in milestones)
            if not milestones or any(m <= 0 for m in milestones) or list(milestones) != sorted(
                    set(milestones)):
                raise ValueError('MultigridHook.cycle_milestones must be increasing positive epochs, '
                                 f'got {self.cycle_milestones!r}')
        object.__setattr__(self, 'long_cycle_factors', long_factors)
        object.__setattr__(self, 'short_cycle_factors', short_factors)
        object.__setattr__(self, 'cycle_milestones', milestones)


@dataclass(frozen=True)
class BaseShape:
    """The baseline's per-GPU mini-batch: B clips x T frames (interval I) x S x S pixels."""

    batch_size: int
    clip_len: int
    frame_interval: int
    crop_size: int

    def __post_init__(self) -> None:
        for name, key in (('batch_size', 'train_dataloader.batch_size'),
                          ('clip_len', 'SampleFrames.clip_len'),
                          ('frame_interval', 'SampleFrames.frame_interval'),
                          ('crop_size', 'the final crop/resize of the train pipeline')):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r} (config key: {key})')


@dataclass(frozen=True)
class GridShape:
    """The shape of one mini-batch: per-GPU batch size, clip length T and crop size S."""

    batch_size: int
    clip_len: int
    crop_size: int

    @property
    def volume(self) -> int:
        """B*T*S^2, the quantity multigrid keeps about constant."""
        return self.batch_size * self.clip_len * self.crop_size**2


@dataclass(frozen=True)
class Segment:
    """Epochs ``[epoch_begin, epoch_end)`` of constant long-cycle shape and LR factor.

    ``shapes`` are the per-iteration shapes of the short cycle, in order (a single shape without it);
    the last is the long-cycle shape. ``lr_factor`` is relative to the optimizer's LR, without warmup.
    """

    epoch_begin: int
    epoch_end: int
    lr_stage: int
    long_shape: GridShape
    lr_factor: float
    shapes: tuple[GridShape, ...]
    batch_multiplier: int

    @property
    def epochs(self) -> int:
        return self.epoch_end - self.epoch_begin

    @property
    def mean_batch_size(self) -> float:
        return sum(s.batch_size for s in self.shapes) / len(self.shapes)

    def batches_per_shape(self, samples: int) -> tuple[int, ...]:
        """Full batches of each entry of ``shapes`` that the short cycle makes from ``samples`` indices.

        The shapes take turns (round-robin); the epoch ends at the first batch that does not fill.
        """
        cycle = sum(s.batch_size for s in self.shapes)
        cycles, left = divmod(samples, cycle) if cycle else (0, 0)
        counts, fits = [], True
        for shape in self.shapes:
            fits = fits and left >= shape.batch_size
            if fits:
                left -= shape.batch_size
            counts.append(cycles + fits)
        return tuple(counts)

    def batches_per_epoch(self, samples: int) -> int:
        """Exact number of full batches the short cycle makes from ``samples`` indices."""
        return sum(self.batches_per_shape(samples))


@dataclass(frozen=True)
class MultigridPlan:
    """The whole schedule. Build it with :func:`build_plan`; every component reads it.

    ``notes`` say what the model changed in the plan (:func:`mmmultigrid.models.segments.temporal_options`).
    """

    base: BaseShape
    options: MultigridOptions
    world_size: int
    baseline_max_epochs: int
    max_epochs: int
    segments: tuple[Segment, ...]
    lr_curve: LRCurve = field(repr=False)
    step_schedule: bool
    notes: tuple[str, ...] = ()

    def segment_at(self, epoch: int) -> Segment:
        """The segment that holds ``epoch`` (the last one beyond the end)."""
        for segment in self.segments:
            if epoch < segment.epoch_end:
                return segment
        return self.segments[-1]

    def epoch_shapes(self, epoch: int) -> tuple[GridShape, ...]:
        """The short-cycle shapes of ``epoch``, in iteration order."""
        return self.segment_at(epoch).shapes

    def lr_factor(self, epoch: int, progress: float) -> float:
        """LR relative to the optimizer's LR at ``epoch``, ``progress`` in [0, 1] of all iterations.

        Step schedules: the segment's factor (reference arithmetic) times the baseline's warmup at the
        same fraction of iterations. Smooth schedules: the baseline's curve at the same fraction of
        iterations times the segment's linear-scaling batch multiplier.
        """
        segment = self.segment_at(epoch)
        baseline_epoch = progress * self.baseline_max_epochs
        if self.step_schedule:
            return segment.lr_factor * self.lr_curve.factor(baseline_epoch, exclude=STEP_SCHEDULERS)
        return segment.batch_multiplier * self.lr_curve.factor(baseline_epoch)

    # --- figures -------------------------------------------------------------------------------------
    def relative_iterations(self) -> float:
        """Iterations of the multigrid run, in baseline epochs' worth of iterations."""
        return sum(s.epochs * self.base.batch_size / s.mean_batch_size for s in self.segments)

    @property
    def iteration_speedup(self) -> float:
        """Baseline iterations / multigrid iterations (without rounding to whole batches)."""
        return self.baseline_max_epochs / self.relative_iterations()

    @property
    def flop_speedup(self) -> float:
        """Baseline FLOPs / multigrid FLOPs, taking a clip's cost as proportional to T*S^2."""
        base = self.base.clip_len * self.base.crop_size**2
        multigrid = 0.0
        for s in self.segments:
            clips = sum(g.batch_size for g in s.shapes)
            per_clip = sum(g.batch_size * g.clip_len * g.crop_size**2 for g in s.shapes) / clips
            multigrid += s.epochs * per_clip
        return self.baseline_max_epochs * base / multigrid

    def iterations(self, dataset_length: int) -> tuple[int, int]:
        """Exact (baseline, multigrid) iteration counts for a dataset of ``dataset_length`` clips.

        Each rank gets ``ceil(length / world_size)`` clips (DefaultSampler).
        """
        return self.rank_iterations(math.ceil(dataset_length / self.world_size))

    def rank_iterations(self, samples: int) -> tuple[int, int]:
        """Exact (baseline, multigrid) iteration counts when each rank uses ``samples`` clips an epoch.

        The baseline keeps its last partial batch, multigrid drops it.
        """
        baseline = self.baseline_max_epochs * math.ceil(samples / self.base.batch_size)
        multigrid = sum(s.epochs * s.batches_per_epoch(samples) for s in self.segments)
        return baseline, multigrid

    def shape_iterations(self, samples: int) -> dict[GridShape, int]:
        """Exact iterations at each grid shape over the whole run (order of first use), each rank
        using ``samples`` clips an epoch."""
        counts = dict.fromkeys(self.shape_segments(), 0)
        for segment in self.segments:
            for shape, batches in zip(segment.shapes, segment.batches_per_shape(samples)):
                counts[shape] += segment.epochs * batches
        return counts

    def shape_segments(self) -> dict[GridShape, tuple[Segment, ...]]:
        """Every grid shape of the plan, in order of first use, with the segments that use it."""
        uses: dict[GridShape, tuple[Segment, ...]] = {}
        for segment, shape in shapes_in_use(self):
            if segment not in uses.get(shape, ()):
                uses[shape] = uses.get(shape, ()) + (segment, )
        return uses

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``tools/plan.py --json``."""
        return {
            'max_epochs': self.max_epochs,
            'baseline_max_epochs': self.baseline_max_epochs,
            'world_size': self.world_size,
            'iteration_speedup': self.iteration_speedup,
            'flop_speedup': self.flop_speedup,
            'base_shape': asdict(self.base),
            'options': asdict(self.options),
            'segments': [{
                'epoch_begin': s.epoch_begin,
                'epoch_end': s.epoch_end,
                'lr_stage': s.lr_stage,
                'batch_size': s.long_shape.batch_size,
                'clip_len': s.long_shape.clip_len,
                'crop_size': s.long_shape.crop_size,
                'lr_factor': s.lr_factor,
                'short_cycle': [{'batch_size': g.batch_size, 'crop_size': g.crop_size}
                                for g in s.shapes],
            } for s in self.segments],
            **({'notes': list(self.notes)} if self.notes else {}),
        }


def shapes_in_use(plan: MultigridPlan) -> Iterator[tuple[Segment, GridShape]]:
    """Every (segment, short-cycle shape) of the plan in training order, repeats included."""
    for segment in plan.segments:
        for shape in segment.shapes:
            yield segment, shape


def epoch_ranges(segments: Sequence[Segment]) -> str:
    """``a-b, c-d``: the segments' epochs (``b`` not included), adjacent ranges merged."""
    ranges: list[list[int]] = []
    for segment in segments:
        if ranges and ranges[-1][1] == segment.epoch_begin:
            ranges[-1][1] = segment.epoch_end
        else:
            ranges.append([segment.epoch_begin, segment.epoch_end])
    return ', '.join(f'{begin}-{end}' for begin, end in ranges)


def describe_use(shape: GridShape, segments: Sequence[Segment]) -> str:
    """``grid shape (batch B, T=t, S=s) of epochs a-b, c-d``: the shape and the segments' epochs."""
    return (f'grid shape (batch {shape.batch_size}, T={shape.clip_len}, S={shape.crop_size}) of epochs '
            f'{epoch_ranges(segments)}')


def build_plan(base: BaseShape, options: MultigridOptions, lr_curve: LRCurve, max_epochs: int,
               world_size: int = 1) -> MultigridPlan:
    """Compute the multigrid plan for a baseline of ``max_epochs`` epochs on ``world_size`` GPUs."""
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f'train_cfg.max_epochs must be a positive int, got {max_epochs!r}')
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f'world_size must be a positive int, got {world_size!r}')
    step = lr_curve.step_term
    families = _shape_families(base, options)
    if options.long_cycle:
        raw = _long_cycle_schedule(families, _stage_bounds(options, step, max_epochs), max_epochs,
                                   options.epoch_factor)
    else:
        bounds = _stage_bounds(options, step, max_epochs) if step is not None else [0]
        raw = _stretched_schedule(families[-1], bounds, max_epochs, options.epoch_factor)
    gamma = step.args.get('gamma', 0.1) if step is not None else 1.0
    segments = []
    begin = 0
    for stage, shapes, end, lr_stage in raw:
        if end <= begin:
            continue
        multiplier = shapes[-1].batch_size // base.batch_size
        factor = gamma**lr_stage * multiplier if step is not None else float(multiplier)
        segments.append(Segment(begin, end, stage, shapes[-1], _round_factor(factor), shapes,
                                multiplier))
        begin = end
    plan = MultigridPlan(base, options, world_size, max_epochs, begin, tuple(segments), lr_curve,
                         step is not None)
    if step is None:
        # Smooth schedules: report each segment's LR at its first iteration (warmup aside).
        total, done, smooth = plan.relative_iterations(), 0.0, []
        for s in segments:
            curve = lr_curve.factor(done / total * max_epochs, exclude=WARMUP_SCHEDULERS)
            smooth.append(replace(s, lr_factor=_round_factor(s.batch_multiplier * curve)))
            done += s.epochs * base.batch_size / s.mean_batch_size
        plan = replace(plan, segments=tuple(smooth))
    return plan


def _round_factor(value: float) -> float:
    return float(f'{value:.12g}')


def _stage_bounds(options: MultigridOptions, step: Any, max_epochs: int) -> list[int]:
    """``[0, m1, ..., mk]``: the baseline epochs where LR stages (long cycles) begin."""
    if options.cycle_milestones is not None:
        milestones = list(options.cycle_milestones)
        key = 'MultigridHook.cycle_milestones'
    elif step is not None:
        milestones = step_milestones(step, max_epochs)
        key = 'the milestones of param_scheduler'
    else:
        milestones = sorted({round(max_epochs * k / 4) for k in (1, 2, 3)} - {0, max_epochs})
        key = 'MultigridHook.cycle_milestones'
    if not milestones or milestones[-1] >= max_epochs:
        raise ValueError(f'{key} must hold at least one epoch below train_cfg.max_epochs='
                         f'{max_epochs}, got {milestones}')
    return [0] + milestones


def long_cycle_shape(base: BaseShape, t_factor: float, s_factor: float) -> tuple[int, int]:
    """(T, S) of the long-cycle factors ``(t_factor, s_factor)`` of ``base``, rounded as the plan does."""
    return max(1, round(base.clip_len * t_factor)), _scaled_crop(base, s_factor)


def _scaled_crop(base: BaseShape, factor: float) -> int:
    return max(1, round(base.crop_size * factor))


def _shape_families(base: BaseShape, options: MultigridOptions) -> list[tuple[GridShape, ...]]:
    """For each long-cycle shape, its short-cycle shapes (the long-cycle shape last)."""
    base_volume = base.clip_len * base.crop_size**2
    long_factors = options.long_cycle_factors if options.long_cycle else ((1.0, 1.0),)
    families = []
    for t_factor, s_factor in long_factors:
        clip_len, long_crop = long_cycle_shape(base, t_factor, s_factor)
        crops = [long_crop]
        if options.short_cycle:
            crops = [_scaled_crop(base, f) for f in options.short_cycle_factors] + crops
        families.append(tuple(
            GridShape(base.batch_size * max(1, round(base_volume / (clip_len * crop**2))), clip_len,
                      crop) for crop in crops))
    return families


Raw = list[tuple[int, tuple[GridShape, ...], int, int]]  # (stage, shapes, epoch_end, lr_stage)


def _long_cycle_schedule(families: list[tuple[GridShape, ...]], bounds: list[int], max_epochs: int,
                         epoch_factor: float) -> Raw:
    """PySlowFast's long-cycle arithmetic: one long cycle per stage, then a fine-tuning phase."""
    mean_batch = [sum(g.batch_size for g in f) / len(f) for f in families]
    total_batch = sum(mean_batch)
    schedule = []  # (stage, shapes, epochs)
    relative_iters = 0.0
    for stage in range(len(bounds) - 1):
        stage_epochs = bounds[stage + 1] - bounds[stage]
        for shapes, batch in zip(families, mean_batch):
            epochs = stage_epochs * batch / total_batch
            relative_iters += epochs / batch
            schedule.append((stage, shapes, epochs))
    iteration_saving = bounds[-1] / relative_iters
    final_stage = len(bounds) - 1
    finetune_epochs = (max_epochs - bounds[-1]) / iteration_saving * mean_batch[-1]
    schedule.append((final_stage, families[-1], finetune_epochs))
    scale = max_epochs * epoch_factor / sum(epochs for _, _, epochs in schedule)
    raw: Raw = []
    elapsed = 0.0
    for stage, shapes, epochs in schedule:
        elapsed += epochs * scale
        raw.append((stage, shapes, int(round(elapsed)), stage))
    # The fine-tuning phase: its first half keeps the previous stage's LR.
    stage, shapes, end, _ = raw.pop()
    middle = (raw[-1][2] + end) // 2
    raw += [(stage, shapes, middle, stage - 1), (stage, shapes, end, stage)]
    return _keep_last_epoch(raw)


def _keep_last_epoch(raw: Raw) -> Raw:
    """Clamp earlier ends so the final segment (base shape, final LR) keeps at least one epoch.

    Segments that round to zero epochs are dropped by :func:`build_plan`; in short schedules this
    clamp keeps the last one, which the model is evaluated at.
    """
    total = raw[-1][2]
    if total < 1:
        raise ValueError(f'train_cfg.max_epochs x MultigridHook.epoch_factor rounds to {total} '
                         'epochs; it must give at least 1')
    return [(stage, shapes, min(end, total - 1), lr_stage) for stage, shapes, end, lr_stage in raw[:-1]
            ] + raw[-1:]


def _stretched_schedule(shapes: tuple[GridShape, ...], bounds: Sequence[int], max_epochs: int,
                        epoch_factor: float) -> Raw:
    """Without the long cycle: the baseline's stages stretched by ``epoch_factor``."""
    ends = [round(b * epoch_factor) for b in bounds[1:]] + [round(max_epochs * epoch_factor)]
    return _keep_last_epoch([(stage, shapes, end, stage) for stage, end in enumerate(ends)])


__all__ = ['BaseShape', 'GridShape', 'MultigridOptions', 'MultigridPlan', 'Segment', 'build_plan',
           'describe_use', 'epoch_ranges', 'long_cycle_shape', 'shapes_in_use']
