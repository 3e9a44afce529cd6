"""``MultigridHook``: runs the plan inside mmengine's unchanged Runner.

At ``before_train`` it makes the plan from the config, hands it to ``MultigridSampler``, sets the loop's
stretched ``max_epochs`` and exact total iterations (so progress and ETA are right), switches batch norm
to groups of ``bn_base_size`` clips (logging how each batch size is grouped), makes fixed-size
position embeddings follow the grid shape (:mod:`mmmultigrid.models.embeddings`), compiles the backbone for
every grid shape when the config sets ``compile`` (:mod:`mmmultigrid.models.compile`) and runs the preflight
checks. Every iteration it sets the LR from the plan (absolute values: nothing compounds with the
config's chainable schedulers, which it overrides) and logs the batch's shape. With ``precise_bn``, it
recomputes the BN statistics at the base shape before each validation and at the end
(:mod:`mmmultigrid.models.precise_bn`). With ``loader_check``, it logs the loader's cost per grid shape at
start-up and warns when data wait at a shape's first iterations says more workers are needed
(:mod:`mmmultigrid.data.loader_check`); the train loader's batches travel from its workers as one tensor
each (:mod:`mmmultigrid.data.collate`). Its state travels in checkpoints, so ``--resume`` continues the same
plan.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmaction.registry import HOOKS

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.models.batchnorm import describe_groups, local_groups, neighbour_group, ranks_per_group, \
    use_grouped_batchnorm
from mmmultigrid.data.collate import StackingCollate
from mmmultigrid.models.compile import compile_backbone
from mmmultigrid.models.embeddings import adapt_embeddings
from mmmultigrid.data.loader_check import LoaderWatch
from mmmultigrid.plan import DEFAULT_LONG_CYCLE_FACTORS, DEFAULT_SHORT_CYCLE_FACTORS, GridShape, \
    MultigridOptions, MultigridPlan
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.models.precise_bn import grid_loader, recompute_from_training_forward
from mmmultigrid.engine.preflight import run_preflight
from mmmultigrid.report import format_plan
from mmmultigrid.data.sampler import MultigridSampler
from mmmultigrid.engine.step_time import format_step_times, measure_plan

CHECKPOINT_KEY = 'multigrid'


@HOOKS.register_module()
class MultigridHook(Hook):
    """Multigrid training: LR, batch shape and batch norm from one plan.

    Args:
        long_cycle, short_cycle, long_cycle_factors, short_cycle_factors, epoch_factor, bn_base_size,
            cycle_milestones: The method's options, see :class:`~mmmultigrid.plan.MultigridOptions`.
        grouped_bn: Compute BN statistics over groups of ``bn_base_size`` clips.
        precise_bn: Batches (at the base shape) from which BN statistics are recomputed after each
            epoch that a validation follows and after the last; 0 turns it off. The number used is
            logged with the validation's metrics as ``precise_bn_batches``.
        preflight: Check every grid shape against the model and data before the first iteration.
        loader_check: Clips loaded per grid shape at start-up to log the loader's cost per shape (with
            a warning where it will not keep up); and, when not 0, the data wait of the first
            iterations at each shape is watched (a warning says how many workers would keep up).
        measure_steps: Training iterations timed at every grid shape and the base shape at start-up
            (random inputs; the weights and optimizer state are restored), logged with the predicted
            wall-clock speed-up of the plan (:mod:`mmmultigrid.engine.step_time`); 0 turns it off.
        trace: Append one JSON line per iteration (epoch, iter, batch_size, clip_len, crop_size, lr)
            to ``<work_dir>/multigrid_trace.rank<R>.jsonl`` on every rank, and at the end of training
            a line with the SHA-256 of the weights.
    """

    # Before RuntimeInfoHook (VERY_HIGH), so the LR it records is the one this hook sets.
    priority = 'HIGHEST'

    def __init__(self,
                 long_cycle: bool = True,
                 short_cycle: bool = True,
                 long_cycle_factors: Sequence[Sequence[float]] = DEFAULT_LONG_CYCLE_FACTORS,
                 short_cycle_factors: Sequence[float] = DEFAULT_SHORT_CYCLE_FACTORS,
                 epoch_factor: float = 1.5,
                 bn_base_size: int = 8,
                 cycle_milestones: Sequence[int] | None = None,
                 grouped_bn: bool = True,
                 preflight: bool = True,
                 trace: bool = False,
                 precise_bn: int = 0,
                 loader_check: int = 2,
                 measure_steps: int = 0) -> None:
        self.options = MultigridOptions(long_cycle, short_cycle, long_cycle_factors,
                                        short_cycle_factors, epoch_factor, bn_base_size,
                                        cycle_milestones)
        self.grouped_bn = grouped_bn
        self.preflight = preflight
        self.trace = trace
        if isinstance(precise_bn, bool) or not isinstance(precise_bn, int):
            raise TypeError('MultigridHook.precise_bn must be an int (batches; 0 turns it off), '
                            f'got {precise_bn!r}')
        if precise_bn < 0:
            raise ValueError(f'MultigridHook.precise_bn must be >= 0 (batches; 0 turns it off), '
                             f'got {precise_bn!r}')
        self.precise_bn = precise_bn
        if isinstance(loader_check, bool) or not isinstance(loader_check, int) or loader_check < 0:
            raise ValueError('MultigridHook.loader_check must be an int >= 0 (clips per grid shape; 0 '
                             f'turns it off), got {loader_check!r}')
        self.loader_check = loader_check
        if isinstance(measure_steps, bool) or not isinstance(measure_steps, int) or measure_steps < 0:
            raise ValueError('MultigridHook.measure_steps must be an int >= 0 (iterations timed per grid '
                             f'shape; 0 turns it off), got {measure_steps!r}')
        self.measure_steps = measure_steps
        self.loader_watch: LoaderWatch | None = None
        self._shape: GridShape | None = None
        self.plan: MultigridPlan | None = None
        self.sampler: MultigridSampler | None = None
        self.epoch_starts: list[int] = []
        self._checkpoint_plan: dict | None = None

    # --- start-up --------------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        self.sampler = find_sampler(runner)
        check_pipeline(runner)
        plan = plan_from_config(runner.cfg, get_world_size(), self.options)
        if self._checkpoint_plan is not None and self._checkpoint_plan != json_round_trip(plan):
            raise RuntimeError('the multigrid plan of this config differs from the one in the resumed '
                               'checkpoint: resume with the config (and number of GPUs) it was '
                               'trained with')
        self.plan = plan
        self.sampler.set_plan(plan)
        self.epoch_starts = [0]
        for epoch in range(plan.max_epochs):
            length = self.sampler.epoch_length(epoch)
            if length == 0:
                segment = plan.segment_at(epoch)
                raise ValueError(
                    f'epochs {segment.epoch_begin}-{segment.epoch_end} would have no iteration: '
                    f'{self.sampler.samples_per_rank} clips per GPU do not fill one batch of the short '
                    f'cycle {[g.batch_size for g in segment.shapes]}; lower '
                    'train_dataloader.batch_size or use more training clips')
            self.epoch_starts.append(self.epoch_starts[-1] + length)
        loop = runner.train_loop
        loop._max_epochs = plan.max_epochs
        loop._max_iters = self.epoch_starts[-1]
        for group in runner.optim_wrapper.param_groups:
            group.setdefault('initial_lr', group['lr'])
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        converted = use_grouped_batchnorm(model, plan.options.bn_base_size) if self.grouped_bn else 0
        print_log(format_plan(plan, self.sampler.samples_per_rank), logger='current')
        print_log(f'MultigridHook: {loop.max_iters} iterations in {plan.max_epochs} epochs; '
                  f'{converted} BatchNorm3d layers use groups of {plan.options.bn_base_size} clips; '
                  'the plan sets the LR (LR entries of param_scheduler are overridden)',
                  logger='current')
        if converted:
            make_bn_groups(plan)
        for adapted in adapt_embeddings(model):
            print_log(f'MultigridHook: {adapted}', logger='current')
        if runner.cfg.get('compile'):  # before preflight, whose forward passes then compile too
            vars(runner.model).pop('train_step', None)  # mmengine's compiled one, see compile.py
            num_shapes = len(plan.shape_segments())
            print_log('MultigridHook: ' + compile_backbone(model, num_shapes, runner.cfg.compile) +
                      " (instead of mmengine's compiled train_step)", logger='current')
        if self.preflight:
            run_preflight(runner, plan, samples_per_rank=self.sampler.samples_per_rank,
                          loader_samples=self.loader_check)
        if self.measure_steps:
            times = measure_plan(model, runner.optim_wrapper, plan, model.cls_head.num_classes,
                                 self.measure_steps)
            print_log(format_step_times(plan, times, self.sampler.samples_per_rank), logger='current')
        if self.loader_check:
            self.loader_watch = LoaderWatch(runner.train_dataloader.num_workers)
        loader = runner.train_dataloader
        if not isinstance(loader.collate_fn, StackingCollate):  # before the workers start
            loader.collate_fn = StackingCollate(loader.collate_fn)

    def before_train_epoch(self, runner) -> None:
        if self.loader_watch is not None:
            self.loader_watch.epoch_started(time.perf_counter())

    # --- every iteration -------------------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        lr = self.set_lr(runner)
        shapes = self.sampler.shapes(runner.epoch)
        shape = shapes[batch_idx % len(shapes)]
        actual = batch_shape(data_batch)
        planned = (shape.batch_size, shape.clip_len, shape.crop_size)
        if actual is not None and actual != planned:
            raise RuntimeError(f'epoch {runner.epoch} batch {batch_idx}: the plan says (B, T, S) = '
                               f'{planned}, the loader gave {actual}; is the train pipeline wrapped '
                               'in ShapeVaryingPipeline?')
        if self.loader_watch is not None:
            self._shape = shape
            self.loader_watch.iteration_started(time.perf_counter())
        hub = runner.message_hub
        for key, value in zip(('batch_size', 'clip_len', 'crop_size'), planned):
            hub.update_scalar(f'train/{key}', value)
        if self.trace:
            self.write_trace(runner, dict(epoch=runner.epoch, iter=runner.iter, batch_size=planned[0],
                                          clip_len=planned[1], crop_size=planned[2], lr=lr))

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        if self.loader_watch is not None:
            message = self.loader_watch.iteration_ended(self._shape, time.perf_counter())
            if message:
                print_log(f'MultigridHook: {message}', logger='current', level=logging.WARNING)

    # --- precise batch norm ----------------------------------------------------------------------------
    def after_train_epoch(self, runner) -> None:
        # Before CheckpointHook and the validation: both see the recomputed statistics.
        if self.precise_bn and (runner.epoch + 1 == runner.max_epochs or validates_after_epoch(runner)):
            self.recompute_bn_stats(runner)

    def recompute_bn_stats(self, runner) -> None:
        """Precise BN: statistics from ``precise_bn`` training batches at the base shape (the last
        segment's long-cycle shape, the one validation and test run at)."""
        shape = self.plan.segments[-1].long_shape
        num_batches = min(self.precise_bn, self.sampler.samples_per_rank // shape.batch_size)
        loader = grid_loader(runner.train_dataloader, self.sampler.sampler, shape, num_batches)
        start = time.perf_counter()
        layers, count = recompute_from_training_forward(runner.model, loader)
        # logged with the next validation's metrics, so that a run's record says what it cost
        runner.message_hub.update_scalar('val/precise_bn_batches', count)
        print_log(f'MultigridHook: precise BN: running statistics of {len(layers)} BN layers '
                  f'recomputed from {count} batches of {shape.batch_size} x {shape.clip_len} x '
                  f'{shape.crop_size}px per GPU, averaged over {get_world_size()} GPU(s) '
                  f'({time.perf_counter() - start:.1f} s)', logger='current')

    def after_train(self, runner) -> None:
        if self.trace:  # lets a test or a person check that every rank ends with the same weights
            digest = hashlib.sha256()
            for param in runner.model.parameters():
                digest.update(param.detach().cpu().numpy().tobytes())
            self.write_trace(runner, dict(event='end', iter=runner.iter,
                                          weights_sha256=digest.hexdigest()))

    @staticmethod
    def write_trace(runner, record: dict) -> None:
        with open(Path(runner.work_dir) / f'multigrid_trace.rank{get_rank()}.jsonl', 'a') as f:
            f.write(json.dumps(record) + '\n')

    def set_lr(self, runner) -> float:
        """Set every param group's LR to ``initial_lr`` times the plan's factor; returns the first."""
        progress = runner.iter / max(1, self.epoch_starts[-1])
        factor = self.plan.lr_factor(runner.epoch, progress)
        groups = runner.optim_wrapper.param_groups
        for group in groups:
            group['lr'] = group['initial_lr'] * factor
        return groups[0]['lr']

    # --- checkpoints -----------------------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.plan is not None:
            checkpoint[CHECKPOINT_KEY] = dict(plan=json_round_trip(self.plan))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        self._checkpoint_plan = saved['plan'] if saved else None


def json_round_trip(plan: MultigridPlan) -> dict:
    """The plan as plain JSON data (tuples become lists), for checkpoints and comparison."""
    return json.loads(json.dumps(plan.to_dict()))


def make_bn_groups(plan: MultigridPlan) -> None:
    """Make the process groups of grouped batch norm and log how each batch size of the plan is grouped
    (a warning where groups are not of ``bn_base_size`` clips).

    Every rank makes all groups here, in the same order, outside any compiled graph (dynamo cannot trace
    ``new_group``).
    """
    size, world = plan.options.bn_base_size, plan.world_size
    batches = sorted({shape.batch_size for shape in plan.shape_segments()}, reverse=True)
    for ranks in sorted({ranks_per_group(b, size, world) for b in batches} - {1}):
        neighbour_group(ranks)
    print_log('MultigridHook: batch norm groups: ' + '; '.join(
        f'batch {b}: {describe_groups(b, size, world)}' for b in batches), logger='current')
    small = [b for b in batches if b < size and ranks_per_group(b, size, world) == 1]
    if small:
        print_log(f'MultigridHook: batches {small} per GPU normalise fewer than bn_base_size={size} '
                  'clips: groups across GPUs need the batch to divide bn_base_size and bn_base_size / '
                  f'batch to divide the number of GPUs ({world}); change MultigridHook.bn_base_size, '
                  'train_dataloader.batch_size or the number of GPUs', logger='current',
                  level=logging.WARNING)
    uneven = [b for b in batches if b > size and b % size]
    if uneven:
        print_log(f'MultigridHook: bn_base_size={size} does not divide batches {uneven} per GPU: they are '
                  'normalised in groups of ' + ', '.join(
                      f'{b // local_groups(b, size)} (batch {b})' for b in uneven) +
                  '; a batch that bn_base_size divides (train_dataloader.batch_size) keeps groups of '
                  f'{size} at every grid shape', logger='current', level=logging.WARNING)


def validates_after_epoch(runner) -> bool:
    """Whether ``EpochBasedTrainLoop.run`` validates after the epoch now ending (its condition)."""
    loop = runner.train_loop
    done = runner.epoch + 1
    # The loop picks the interval with bisect(milestones, epoch + 1) after counting the epoch done.
    interval = loop.dynamic_intervals[bisect.bisect(loop.dynamic_milestones, done + 1) - 1]
    return runner.val_loop is not None and done >= loop.val_begin and (
        done % interval == 0 or done == loop.max_epochs)


def find_sampler(runner) -> MultigridSampler:
    sampler = getattr(runner.train_dataloader, 'batch_sampler', None)
    if not isinstance(sampler, MultigridSampler):
        raise TypeError('MultigridHook needs train_dataloader.batch_sampler=dict(type='
                        f'"MultigridSampler"), got {type(sampler).__name__}')
    return sampler


def check_pipeline(runner) -> None:
    dataset = runner.train_dataloader.dataset
    transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', [])
    if not any(isinstance(t, ShapeVaryingPipeline) for t in transforms):
        raise TypeError('MultigridHook needs the train pipeline wrapped as train_dataloader.dataset.'
                        'pipeline=[dict(type="ShapeVaryingPipeline", transforms=train_pipeline)]')


def batch_shape(data_batch: Any) -> tuple[int, int, int] | None:
    """(B, T, S) of a packed batch of NCTHW clips, or None for other layouts."""
    inputs = data_batch.get('inputs') if isinstance(data_batch, dict) else None
    if not inputs or getattr(inputs[0], 'dim', lambda: 0)() != 5:
        return None
    clip = inputs[0]
    return len(inputs), int(clip.shape[2]), int(clip.shape[-1])

