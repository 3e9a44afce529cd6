"""Print (or plot) the multigrid schedule of a config without training.

Examples::

    python tools/plan.py \
        configs/slowfast_r50_8xb8-8x8x1-steplr-239e_kinetics400-rgb_multigrid.py --gpus 8
    python tools/plan.py CONFIG --gpus 8 --json > plan.json
    python tools/plan.py CONFIG --gpus 8 --plot plan.png --dataset-length 240000
    python tools/plan.py CONFIG --gpus 8 --dataset-length 240000 --loader-check 4
    python tools/plan.py CONFIG --gpus 8 --dataset-length 240000 --measure-steps 10

Unless ``--no-feature-maps``, the model is built from the config (no weights are loaded) and run on the
CPU at every grid shape: a shape at which a clip's output depends on the other clips of its batch is an
error (``mmmultigrid/models/batch_mixing.py``), and the backbone's feature map is reported; feature maps too
small to learn from are warned about on stderr (``warning: ...``). With ``--loader-check N``, N clips
of the config's train dataset are loaded at every grid shape (the data must be there) to report the
loader's work per iteration against the base shape's, with a warning for each shape where it will not
keep up. With ``--measure-steps N``, N training iterations of the per-GPU batch (forward, backward and
optimizer step on random inputs, the config's ``optim_wrapper`` with its AMP setting, batch norm
grouped as ``MultigridHook`` does) are timed at every grid shape and at the base shape on the device the
run would use (CUDA when there is one, else the CPU), and with ``--dataset-length`` the whole plan's
wall-clock speed-up is predicted from them. Errors in the config print ``error: ...`` on stderr and exit
with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os.path as osp
import sys
from typing import Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import mmmultigrid  # noqa: E402,F401  (stack fixes and registries before the config is read)
import torch  # noqa: E402
from mmaction.registry import DATASETS, MODELS  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from mmmultigrid.baseline import grouped_bn_enabled, load_config, plan_from_config  # noqa: E402
from mmmultigrid.models.batch_mixing import find_batch_mixing  # noqa: E402
from mmmultigrid.models.batchnorm import use_grouped_batchnorm  # noqa: E402
from mmmultigrid.models.embeddings import adapt_embeddings  # noqa: E402
from mmmultigrid.models.feature_map import (FeatureMap, feature_map_warnings,  # noqa: E402
                                     format_feature_maps, measure_feature_maps)
from mmmultigrid.data.loader_check import (format_loader_costs, loader_cost_warnings,  # noqa: E402
                                      measure_loader_costs)
from mmmultigrid.plan import GridShape, MultigridPlan  # noqa: E402
from mmmultigrid.report import format_plan  # noqa: E402
from mmmultigrid.engine.step_time import (StepTimes, build_trainable, format_step_times,  # noqa: E402
                                   measure_plan, predicted_seconds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Show the multigrid schedule of a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--gpus', type=int, default=1, help='number of training processes (GPUs)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs merged into the config; lists as '
        'key="[a,b]" or key=a,b; no white space')
    parser.add_argument('--json', action='store_true',
                        help='print the plan as one JSON object instead of the table')
    parser.add_argument('--plot', metavar='PATH.png',
                        help='also draw the schedule to this PNG file')
    parser.add_argument('--dataset-length', type=int, metavar='N',
                        help='training clips in the dataset: add exact iteration counts')
    parser.add_argument('--no-feature-maps', action='store_true',
                        help="do not build the model to report the backbone's feature map per shape "
                        'and check that the clips of a batch do not mix')
    parser.add_argument('--loader-check', type=int, default=0, metavar='N',
                        help="load N clips of the train dataset per grid shape and report the "
                        "loader's work per iteration against the base shape's")
    parser.add_argument('--measure-steps', type=int, default=0, metavar='N',
                        help='time N training iterations at every grid shape and the base shape on '
                        'the run\'s device and predict the wall-clock speed-up (with --dataset-length)')
    args = parser.parse_args(argv)
    if args.measure_steps < 0:
        parser.error(f'--measure-steps must be >= 0, got {args.measure_steps}')
    if args.loader_check < 0:
        parser.error(f'--loader-check must be >= 0, got {args.loader_check}')
    if args.dataset_length is not None and args.dataset_length < 1:
        parser.error(f'--dataset-length must be positive, got {args.dataset_length}')
    return args


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model on the CPU, with the embeddings adapted as ``MultigridHook`` adapts them;
    ``init_weights`` is not called, so nothing is downloaded."""
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    model = MODELS.build(cfg.model).cpu()
    adapt_embeddings(model)
    return model


def measure_steps(cfg: Config, plan: MultigridPlan, steps: int) -> StepTimes:
    """Seconds per training iteration at every shape of ``plan`` on the device the run would use."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model, optim_wrapper, num_classes = build_trainable(cfg, device)
    adapt_embeddings(model)
    if grouped_bn_enabled(cfg):
        use_grouped_batchnorm(model, plan.options.bn_base_size)
    return measure_plan(model, optim_wrapper, plan, num_classes, steps)


def feature_map_rows(plan: MultigridPlan, maps: dict[GridShape, tuple[FeatureMap, ...]],
                     samples: int | None) -> list[dict]:
    """The ``feature_maps`` entries of ``--json``: one per grid shape, in order of first use."""
    uses = plan.shape_segments()
    steps = None if samples is None else plan.shape_iterations(samples)
    rows = []
    for shape, outputs in maps.items():
        row = dict(batch_size=shape.batch_size, clip_len=shape.clip_len, crop_size=shape.crop_size,
                   epochs=[[s.epoch_begin, s.epoch_end] for s in uses[shape]],
                   feature_maps=[list(size) for size in outputs])
        if steps is not None:
            row['steps'] = steps[shape]
        rows.append(row)
    return rows


def segment_progress(plan: MultigridPlan) -> list[tuple[float, float]]:
    """For each segment: (progress at its start, progress per epoch), fractions of all iterations.

    An epoch of a segment takes ``base.batch_size / mean_batch_size`` baseline epochs' iterations.
    """
    total = plan.relative_iterations()
    done, spans = 0.0, []
    for s in plan.segments:
        per_epoch = plan.base.batch_size / s.mean_batch_size / total
        spans.append((done, per_epoch))
        done += s.epochs * per_epoch
    return spans


def lr_samples(plan: MultigridPlan,
               points: int = 2000) -> tuple[list[float], list[float], list[float]]:
    """(epochs, progress, LR factors) sampled densely over the whole run."""
    epochs, progress, factors = [], [], []
    for s, (start, per_epoch) in zip(plan.segments, segment_progress(plan)):
        n = max(2, round(points * s.epochs / plan.max_epochs))
        for k in range(n + 1):
            epoch = s.epoch_begin + s.epochs * k / n
            epochs.append(epoch)
            progress.append(min(1.0, start + (epoch - s.epoch_begin) * per_epoch))
            factors.append(plan.lr_factor(s.epoch_begin, progress[-1]))
    return epochs, progress, factors


def plot_plan(plan: MultigridPlan, path: str) -> None:
    """Draw the shapes (top) and the LR factor (bottom) over the multigrid epochs to a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    segments = plan.segments
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True,
                                      gridspec_kw=dict(height_ratios=[3, 2]))
    edges = [s.epoch_begin for s in segments] + [segments[-1].epoch_end]
    long_batch = [s.long_shape.batch_size for s in segments]
    low = [min(g.batch_size for g in s.shapes) for s in segments]
    high = [max(g.batch_size for g in s.shapes) for s in segments]
    if plan.options.short_cycle:
        top.stairs(high, edges, baseline=low, fill=True, alpha=0.25, color='tab:blue',
                   label='short-cycle batch range (per iteration)')
    top.stairs(long_batch, edges, color='tab:blue', linewidth=2, label='long-cycle batch')
    top.axhline(plan.base.batch_size, color='gray', linestyle=':', linewidth=1,
                label=f'baseline batch ({plan.base.batch_size})')
    top.set_yscale('log', base=2)
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.set_ylim(min(low + [plan.base.batch_size]) / 2, max(high) * 2.5)
    for s in segments:
        narrow = s.epochs < 0.05 * plan.max_epochs
        top.annotate(f'{s.long_shape.clip_len}x{s.long_shape.crop_size}',
                     ((s.epoch_begin + s.epoch_end) / 2, s.long_shape.batch_size),
                     xytext=(0, 4), textcoords='offset points', ha='center', va='bottom',
                     rotation=90 if narrow else 0, fontsize=8)
    top.set_ylabel('clips per GPU per iteration')
    top.set_title(f'Multigrid plan: base {plan.base.batch_size} x {plan.base.clip_len} frames x '
                  f'{plan.base.crop_size}px per GPU, {plan.world_size} GPU(s); '
                  f'{plan.baseline_max_epochs} -> {plan.max_epochs} epochs, '
                  f'{plan.iteration_speedup:.2f}x fewer iterations\n'
                  'batch size and long-cycle shape (labels: T frames x S px)', fontsize=10)
    top.legend(loc='upper right', bbox_to_anchor=(1, 0.9), fontsize=8)

    epochs, progress, factors = lr_samples(plan)
    bottom.plot(epochs, factors, color='tab:red', label='multigrid LR factor')
    bottom.plot(epochs, [plan.lr_curve.factor(p * plan.baseline_max_epochs) for p in progress],
                color='gray', linestyle='--', linewidth=1,
                label='baseline LR factor at the same fraction of iterations')
    if plan.step_schedule:
        bottom.set_yscale('log')
    bottom.set_xlabel('multigrid epoch')
    bottom.set_ylabel('LR / optimizer LR')
    bottom.set_title('learning rate (linear scaling with the long-cycle batch)', fontsize=10)
    bottom.legend(loc='upper right', fontsize=8)
    base_shape = segments[-1].shapes if plan.options.long_cycle else None
    for stage in sorted({s.lr_stage for s in segments}):
        members = [s for s in segments if s.lr_stage == stage]
        begin, end = members[0].epoch_begin, members[-1].epoch_end
        fine_tune = stage > 0 and all(s.shapes == base_shape for s in members)
        name = 'fine-tune' if fine_tune else f'stage {stage}'
        top.text((begin + end) / 2, 0.97, name, transform=top.get_xaxis_transform(), ha='center',
                 va='top', fontsize=9, fontweight='bold')
        for ax in (top, bottom):
            if begin > 0:
                ax.axvline(begin, color='black', linewidth=0.8, alpha=0.4)
    for ax in (top, bottom):
        ax.set_xlim(0, plan.max_epochs)
        ax.grid(True, which='major', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        plan = plan_from_config(cfg, args.gpus)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f'error: {exc}'.replace('\n', ' '), file=sys.stderr)
        return 2
    maps = None
    if not args.no_feature_maps:
        try:
            model = build_model(cfg)
            mixing = find_batch_mixing(model, plan)
            maps = None if mixing else measure_feature_maps(model, plan)
        except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as exc:
            print(f'error: the model of the config (model=...) cannot be built or run: {exc}'
                  .replace('\n', ' '), file=sys.stderr)
            return 2
        if mixing:
            print(f'error: {mixing}', file=sys.stderr)
            return 2
    costs = None
    if args.loader_check:
        try:
            init_default_scope(cfg.get('default_scope', 'mmaction'))
            for handler in MMLogger.get_current_instance().handlers:  # stdout stays the plan
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                    handler.setStream(sys.stderr)
            costs = measure_loader_costs(DATASETS.build(cfg.train_dataloader.dataset), plan,
                                         args.loader_check)
        except Exception as exc:  # any failure to build the dataset or load a clip, as in training
            print(f'error: the train dataset (train_dataloader.dataset) cannot be loaded: '
                  f'{type(exc).__name__}: {exc}'.replace('\n', ' '), file=sys.stderr)
            return 2
    samples = None if args.dataset_length is None else math.ceil(args.dataset_length / args.gpus)
    times = None
    if args.measure_steps:
        try:
            times = measure_steps(cfg, plan, args.measure_steps)
        except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as exc:
            print(f'error: the model of the config (model=...) cannot be trained at every grid shape: '
                  f'{type(exc).__name__}: {exc}'.replace('\n', ' '), file=sys.stderr)
            return 2
    workers = cfg.train_dataloader.get('num_workers', 0)
    warnings = ([] if maps is None else feature_map_warnings(plan, maps)) + (
        [] if costs is None else loader_cost_warnings(plan, costs, workers))
    if args.json:
        data = plan.to_dict()
        if args.dataset_length is not None:
            baseline, multigrid = plan.iterations(args.dataset_length)
            data['iterations'] = dict(dataset_length=args.dataset_length, samples_per_rank=samples,
                                      baseline=baseline, multigrid=multigrid)
            for row, s in zip(data['segments'], plan.segments):
                row['iters_per_epoch'] = s.batches_per_epoch(samples)
        if maps is not None:
            data['feature_maps'] = feature_map_rows(plan, maps, samples)
        if costs is not None:
            data['loader_costs'] = [dict(batch_size=c.shape.batch_size, clip_len=c.shape.clip_len,
                                         crop_size=c.shape.crop_size,
                                         seconds_per_clip=c.seconds_per_clip,
                                         cost_vs_base=c.cost_vs_base) for c in costs]
        if times is not None:
            data['step_times'] = times.to_dict()
            if samples is not None:
                baseline_s, multigrid_s = predicted_seconds(plan, times, samples)
                data['step_times']['predicted'] = dict(
                    baseline_s=baseline_s, multigrid_s=multigrid_s, speedup=baseline_s / multigrid_s,
                    iteration_speedup=data['iterations']['baseline'] / data['iterations']['multigrid'])
        if maps is not None or costs is not None:
            data['warnings'] = warnings
        print(json.dumps(data))
    else:
        print(format_plan(plan, samples_per_rank=samples))
        if args.dataset_length is not None:
            baseline, multigrid = plan.iterations(args.dataset_length)
            print(f'Iterations for {args.dataset_length} clips ({samples} per GPU): baseline '
                  f'{baseline}, multigrid {multigrid} ({baseline / multigrid:.2f}x fewer)')
        if maps is not None:
            print(format_feature_maps(plan, maps, samples))
            if samples is None:
                print('Optimizer steps per grid shape: give --dataset-length N (training clips)')
        if costs is not None:
            print(format_loader_costs(costs, plan, workers))
        if times is not None:
            print(format_step_times(plan, times, samples))
            if samples is None:
                print('Predicted wall-clock speed-up: give --dataset-length N (training clips)')
    for warning in warnings:
        print(f'warning: {warning}', file=sys.stderr)
    if args.plot:
        try:
            plot_plan(plan, args.plot)
        except OSError as exc:
            print(f'error: cannot write {args.plot}: {exc}', file=sys.stderr)
            return 2
        print(f'plot written to {args.plot}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
