"""Budget sweep: time to accuracy of the baseline and of multigrid over several schedule lengths.

Each length factor L scales the preset's epochs, LR milestones and warmup by L; the runs of a length
(the baseline and every multigrid variant) train through ``tools/train.py`` (``speedup.train``) on the
same data and seed, ``--jobs`` of them at once, in the order of length, seed and method.
``--extra-seeds`` repeats the runs of the ``--seed-lengths`` (default: the two longest) with other
training seeds. A multigrid variant is multigrid with ``--hook-option`` arguments of ``MultigridHook``
(e.g. another ``long_cycle_factors``); several invocations with other variants or lengths can fill one
``--out`` with ``--resume``.

Time does not depend on the machine's load: ``--calibrate`` times training iterations at every grid
shape of every variant and at the base shape (:mod:`mmmultigrid.engine.step_time`, the preset's torch threads,
on a quiet machine), and stores the seconds with the machine's description in the JSON. Each run records
its iterations per shape and epoch; its ``modeled_time_s`` (and that of every validation point) is their
sum times the calibrated seconds, plus, with ``precise_bn``, the batches of BN statistics recomputed
before each validation so far times the calibrated seconds of that forward pass at the base shape. Its
measured ``wall_clock_s`` is kept beside it.

The JSON is written after every run (``--commit``: committed to git after every completed length and
seed), so a sweep that stops keeps what it measured and ``--resume`` runs only what is missing: a run of
``--out`` is kept when its variant, length and seed match and the preset's settings are the same. Every
run checkpoints each epoch (the last one kept), so ``--resume`` also continues a run that was cut off
part-way (its config unchanged) from its last epoch; its rows are joined as one run's
(``resumed_after_epochs`` in its entry), the interrupted epoch counted once.

Reported (``time_to_accuracy``): for the target "converged baseline's top-1 minus 1 point" (the
baseline's mean at the longest length) and for ``--fixed-target``, the modeled time at which each run's
validation curve first reaches it, the soonest per variant and seed, and the ratio to the baseline's.
Targets of issue 18: the baseline has converged (its last doubling gains less than 1 point); at the
longest length multigrid's mean top-1 >= the baseline's - 1 point; multigrid reaches the converged
baseline's top-1 - 1 point at least 2.5x sooner, every seed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import speedup  # noqa: E402  (puts the repository on sys.path and repairs the OpenMMLab stack)
from accuracy_probe import apply_settings, parse_assignment  # noqa: E402
from mmengine.config import Config  # noqa: E402

from mmmultigrid.baseline import base_shape, plan_from_config  # noqa: E402
from mmmultigrid.plan import GridShape  # noqa: E402

METHODS = ('baseline', 'multigrid')
PARITY_GAP = 0.01  # top-1, as a fraction
CONVERGED_GAIN = 0.01  # the baseline's last doubling gains less than this
MIN_TIME_RATIO = 2.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', choices=sorted(speedup.PRESETS), default='default')
    parser.add_argument('--set', nargs='+', default=[], metavar='SECTION.KEY=VALUE',
                        help='change preset entries, e.g. schedule.lr=0.05 workers=0')
    parser.add_argument('--lengths', type=float, nargs='+', default=[1, 2, 4],
                        help='schedule length factors (epochs, milestones and warmup scaled)')
    parser.add_argument('--extra-seeds', type=int, nargs='*', default=[1],
                        help='training seeds of repeated runs of the --seed-lengths')
    parser.add_argument('--seed-lengths', type=float, nargs='*',
                        help='lengths repeated with --extra-seeds (default: the two longest)')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
    parser.add_argument('--hook-option', nargs='+', default=[], metavar='KEY=VALUE',
                        help='MultigridHook arguments of the multigrid runs (VALUE is JSON), e.g. '
                        "'long_cycle_factors=[[0.5,0.7071],[0.5,1],[1,1]]'")
    parser.add_argument('--validations', type=int, default=6, help='validations per run')
    parser.add_argument('--fixed-target', type=float, default=0.90,
                        help='a second top-1 target (fraction) for time to accuracy')
    parser.add_argument('--resume', action='store_true',
                        help='keep the matching runs of --out and run only the others; a run cut '
                        'off part-way continues from its last epoch checkpoint in --work-dir')
    parser.add_argument('--calibrate', action='store_true',
                        help='time iterations at every grid shape first (on a quiet machine)')
    parser.add_argument('--calibrate-steps', type=int, default=5,
                        help='timed iterations per shape of --calibrate')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs that train at once (accuracy and modeled time do not depend on it; '
                        'their wall_clock_s does)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the runs that would train (after --resume) and stop')
    parser.add_argument('--commit', action='store_true',
                        help='git commit --out and its plot after every completed length and seed')
    parser.add_argument('--work-dir', type=Path, default=speedup.REPO / 'work_dirs' / 'budget_sweep')
    parser.add_argument('--out', type=Path, help='JSON results (default: WORK_DIR/budget_sweep.json)')
    parser.add_argument('--plot', type=Path, help='PNG (default: next to --out)')
    speedup.add_data_arguments(parser)
    args = parser.parse_args(argv)
    if any(length <= 0 for length in args.lengths) or len(set(args.lengths)) != len(args.lengths):
        parser.error(f'--lengths must be distinct positive factors, got {args.lengths}')
    if args.validations < 1:
        parser.error(f'--validations must be >= 1, got {args.validations}')
    if args.jobs < 1:
        parser.error(f'--jobs must be >= 1, got {args.jobs}')
    if args.calibrate_steps < 1:
        parser.error(f'--calibrate-steps must be >= 1, got {args.calibrate_steps}')
    if not 0 < args.fixed_target <= 1:
        parser.error(f'--fixed-target must be a top-1 fraction in (0, 1], got {args.fixed_target}')
    if args.hook_option and 'multigrid' not in args.methods:
        parser.error('--hook-option is for the multigrid runs: add multigrid to --methods')
    args.lengths = sorted(args.lengths)
    args.seed_lengths = args.lengths[-2:] if args.seed_lengths is None else args.seed_lengths
    unknown = sorted(set(args.seed_lengths) - set(args.lengths))
    if unknown:
        parser.error(f'--seed-lengths {unknown} are not among --lengths {args.lengths}')
    args.hook_option = dict(parse_assignment(a) for a in args.hook_option)
    speedup.check_data_arguments(parser, args)
    args.out = args.out or args.work_dir / 'budget_sweep.json'
    args.plot = args.plot or args.out.with_suffix('.png')
    return args


def scaled_schedule(schedule: dict[str, Any], length: float) -> dict[str, Any]:
    """The preset's schedule with epochs, milestones and warmup scaled by ``length``."""
    epochs = max(1, round(schedule['max_epochs'] * length))
    milestones = sorted({min(epochs - 1, max(1, round(m * length))) for m in schedule['milestones']})
    warmup = max(1, round(schedule['warmup_epochs'] * length))
    return dict(schedule, max_epochs=epochs, milestones=milestones, warmup_epochs=warmup)


def variant_name(method: str, hook_options: dict[str, Any]) -> str:
    """``baseline``, ``multigrid``, or ``multigrid`` with its hook options: one name per recipe."""
    if method == 'baseline' or not hook_options:
        return method
    return f'multigrid {json.dumps(hook_options, sort_keys=True, separators=(",", ":"))}'


def run_name(run: dict[str, Any]) -> str:
    """The work-dir name of a planned run, e.g. ``multigrid_x8_seed1_long_cycle_factors-0.5-1-1-1``:
    method, length, seed and every hook option's value, so that two variants never share a folder."""
    name = f"{run['method']}_x{run['schedule']:g}_seed{run['seed']}"
    for key, value in sorted(run['hook_options'].items()):
        name += '_' + key + '-' + re.sub(r'[^0-9A-Za-z.]+', '-', json.dumps(value)).strip('-')
    return name


def run_config(method: str, preset: dict[str, Any], data: dict[str, Any], seed: int,
               validations: int, hook_options: dict[str, Any] | None = None) -> tuple[Config, int]:
    """(config, epochs) of one run: ``speedup.build_config`` with the seed, the hook options and the
    validation points, a checkpoint every epoch (the last one kept: ``--resume`` continues from it); a
    multigrid run's epochs are those of its plan."""
    cfg = speedup.build_config(method, preset, data)
    cfg.randomness.seed = seed
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1, max_keep_ckpts=1)
    if method == 'multigrid' and hook_options:
        cfg.custom_hooks[0].update(hook_options)
    epochs = (plan_from_config(cfg, 1).max_epochs if method == 'multigrid'
              else preset['schedule']['max_epochs'])
    speedup.set_validation(cfg, epochs, validations)
    return cfg, epochs


def planned_runs(args: argparse.Namespace, preset: dict[str, Any]) -> list[dict[str, Any]]:
    """(method, variant, length, seed, preset, hook options) of every run, in the order they train."""
    seed = Config.fromfile(speedup.CONFIGS['baseline']).randomness.seed
    runs = []
    for length in args.lengths:
        for s in [seed] + (list(args.extra_seeds) if length in args.seed_lengths else []):
            sized = dict(copy.deepcopy(preset), schedule=scaled_schedule(preset['schedule'], length))
            for m in args.methods:
                options = args.hook_option if m == 'multigrid' else {}
                runs.append(dict(method=m, variant=variant_name(m, options), schedule=length, seed=s,
                                 preset=sized, hook_options=options))
    return runs


def run_key(run: dict[str, Any]) -> tuple[str, float, int]:
    return run['variant'], run['schedule'], run['seed']


def run_order(run: dict[str, Any]) -> tuple[float, int, bool, str]:
    """Runs sorted by length, seed, then the baseline before the multigrid variants."""
    return run['schedule'], run['seed'], run['method'] != 'baseline', run['variant']


def shape_key(shape: GridShape) -> str:
    return f'{shape.batch_size}x{shape.clip_len}x{shape.crop_size}'


def base_key(preset: dict[str, Any], data: dict[str, Any]) -> str:
    """The key of the base shape in a run's iterations per shape (the baseline logs it as 'base'):
    the plan's base shape, whose T is the segment count for a 2D recognizer."""
    base = base_shape(speedup.build_config('baseline', preset, data))
    return f'{base.batch_size}x{base.clip_len}x{base.crop_size}'


# --- calibration and modeled time ----------------------------------------------------------------------
def calibration_shapes(preset: dict[str, Any], data: dict[str, Any],
                       variants: list[dict[str, Any]]) -> list[GridShape]:
    """The base shape and every grid shape of the multigrid variants (hook options), in first use."""
    from mmmultigrid.engine.step_time import plan_shapes
    shapes: list[GridShape] = []
    for options in variants:
        cfg, _ = run_config('multigrid', preset, data, 0, 1, options)
        shapes += [s for s in plan_shapes(plan_from_config(cfg, 1)) if s not in shapes]
    return shapes


def calibrate(preset: dict[str, Any], data: dict[str, Any], variants: list[dict[str, Any]],
              steps: int) -> dict[str, Any]:
    """Median seconds per training iteration at every shape the runs use, timed on this machine with
    the preset's torch threads (the multigrid model, batch norm grouped as in training)."""
    import torch

    from mmmultigrid.models.batchnorm import use_grouped_batchnorm
    from mmmultigrid.engine.step_time import build_trainable, time_precise_bn_steps, time_train_steps
    shapes = calibration_shapes(preset, data, variants)
    cfg, _ = run_config('multigrid', preset, data, 0, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(preset['threads'])
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model, optim_wrapper, num_classes = build_trainable(cfg, torch.device('cpu'))
        use_grouped_batchnorm(model, plan_from_config(cfg, 1).options.bn_base_size)
        times, _ = time_train_steps(model, optim_wrapper, shapes, num_classes, steps, restore=False)
        precise_bn = time_precise_bn_steps(model, shapes[0], num_classes, steps)
    finally:
        torch.set_num_threads(threads)
    return dict(machine=speedup.machine(), date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                load_average_before=load_before, load_average_after=os.getloadavg(),
                threads=preset['threads'], steps=steps, seconds_taken=time.perf_counter() - start,
                seconds={shape_key(s): statistics.median(t) for s, t in zip(shapes, times)},
                samples={shape_key(s): t for s, t in zip(shapes, times)},
                precise_bn_seconds={shape_key(shapes[0]): statistics.median(precise_bn)})


def add_modeled_time(run: dict[str, Any], calibration: dict[str, Any] | None, base: str) -> None:
    """Set ``modeled_time_s`` of the run and of its validation points from its iterations per shape
    and epoch, plus the precise-BN batches (base-shape forward passes) recomputed before each
    validation so far; None where a shape has no calibrated time."""
    seconds = (calibration or {}).get('seconds', {})
    bn_seconds = (calibration or {}).get('precise_bn_seconds', {})
    elapsed, at_epoch, missing = 0.0, {}, set()
    for epoch, counts in sorted(run['epoch_iterations_per_shape'].items(), key=lambda e: int(e[0])):
        for shape, n in counts.items():
            key = base if shape == 'base' else shape
            if key in seconds:
                elapsed += n * seconds[key]
            else:
                missing.add(key)
        at_epoch[int(epoch)] = elapsed
    precise_bn = 0.0
    for point in sorted(run['validation_curve'], key=lambda p: p['epoch']):
        if point.get('precise_bn_batches'):
            if base in bn_seconds:
                precise_bn += point['precise_bn_batches'] * bn_seconds[base]
            else:
                missing.add(f'precise BN at {base}')
        point['modeled_time_s'] = at_epoch[point['epoch']] + precise_bn
    run['modeled_time_s'] = elapsed + precise_bn
    if missing:
        run['modeled_time_s'] = None
        for point in run['validation_curve']:
            point['modeled_time_s'] = None


def time_basis(runs: list[dict[str, Any]]) -> str:
    """'modeled_time_s' when every run has it, else 'wall_clock_s'."""
    return 'modeled_time_s' if runs and all(r.get('modeled_time_s') is not None
                                            for r in runs) else 'wall_clock_s'


# --- results -------------------------------------------------------------------------------------------
def mean_top1(runs: list[dict[str, Any]], variant: str, length: float) -> float | None:
    values = [r['top1'] for r in runs if r['variant'] == variant and r['schedule'] == length]
    return statistics.fmean(values) if values else None


def first_reach(run: dict[str, Any], target: float, basis: str) -> dict[str, Any] | None:
    """The first validation point of ``run`` at or above ``target`` top-1 (its time, and its epoch of
    the run's ``max_epochs``: how far into its schedule the run got there)."""
    for point in run['validation_curve']:
        if point['top1'] >= target:
            return dict(time_s=point[basis], epoch=point['epoch'], max_epochs=run['max_epochs'],
                        top1=point['top1'], schedule=run['schedule'])
    return None


def time_to_accuracy(runs: list[dict[str, Any]], fixed_target: float) -> dict[str, Any]:
    """For each target: the soonest time each variant's runs reach it, per seed, and the ratio to the
    baseline's (baseline time / variant time) where both reach it."""
    basis = time_basis(runs)
    lengths = sorted({r['schedule'] for r in runs if r['variant'] == 'baseline'})
    if not lengths:
        return dict(basis=basis, converged_baseline=None, targets={})
    converged = mean_top1(runs, 'baseline', lengths[-1])
    previous = mean_top1(runs, 'baseline', lengths[-2]) if len(lengths) > 1 else None
    targets = {'converged_baseline_minus_1': converged - PARITY_GAP, f'top1_{fixed_target:g}':
               fixed_target}
    result: dict[str, Any] = dict(
        basis=basis, converged_baseline=dict(
            length=lengths[-1], top1=converged, previous_length=lengths[-2] if previous else None,
            previous_top1=previous,
            gain=None if previous is None else converged - previous), targets={})
    variants = sorted({r['variant'] for r in runs}, key=lambda v: (v != 'baseline', v))
    seeds = sorted({r['seed'] for r in runs})
    for name, target in targets.items():
        entry: dict[str, Any] = dict(top1=target, reached={}, ratio={})
        for variant in variants:
            per_seed = {}
            for seed in seeds:
                hits = [h for r in runs if r['variant'] == variant and r['seed'] == seed
                        for h in [first_reach(r, target, basis)] if h is not None]
                ran = any(r['variant'] == variant and r['seed'] == seed for r in runs)
                if ran:
                    per_seed[str(seed)] = min(hits, key=lambda h: h['time_s']) if hits else None
            entry['reached'][variant] = per_seed
        base = entry['reached'].get('baseline', {})
        for variant in variants[1:]:
            entry['ratio'][variant] = {
                seed: base[seed]['time_s'] / hit['time_s']
                for seed, hit in entry['reached'][variant].items()
                if hit is not None and base.get(seed) is not None}
        result['targets'][name] = entry
    return result


def check_targets(runs: list[dict[str, Any]], tta: dict[str, Any]) -> dict[str, Any]:
    """The targets of issue 18, each with the figures it was decided on, per multigrid variant."""
    conv = tta['converged_baseline']
    targets: dict[str, Any] = dict(converged=dict(
        met=bool(conv) and conv['gain'] is not None and conv['gain'] < CONVERGED_GAIN,
        gain=None if not conv else conv['gain']))
    if not conv:
        return targets
    main = tta['targets']['converged_baseline_minus_1']
    for variant in sorted({r['variant'] for r in runs} - {'baseline'}):
        top1 = mean_top1(runs, variant, conv['length'])
        seeds = main['reached'].get('baseline', {})
        ratios = main['ratio'].get(variant, {})
        targets[variant] = dict(
            parity=dict(met=top1 is not None and top1 >= conv['top1'] - PARITY_GAP,
                        baseline=conv['top1'], multigrid=top1),
            time_to_accuracy=dict(met=bool(seeds) and set(ratios) == set(seeds) and all(
                r >= MIN_TIME_RATIO for r in ratios.values()), ratio=ratios))
    return targets


def plot(runs: list[dict[str, Any]], tta: dict[str, Any], path: Path) -> None:
    """Validation top-1 against (modeled) training time, every run: colour by variant, solid for the
    first seed, dashed for the others; the final point labelled with the length. Left the whole
    range; right the range of the targets, each target's first hit per variant and seed starred."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    basis = tta['basis']
    fig, (whole, near) = plt.subplots(1, 2, figsize=(14, 5.5))
    variants = sorted({r['variant'] for r in runs}, key=lambda v: (v != 'baseline', v))
    first_seed = min(r['seed'] for r in runs)
    colours = dict(zip(variants, plt.rcParams['axes.prop_cycle'].by_key()['color']))
    curves = [(r, [p[basis] / 60 for p in r['validation_curve']],
               [100 * p['top1'] for p in r['validation_curve']])
              for r in sorted(runs, key=lambda r: (r['variant'], r['seed'], r['schedule']))]
    for ax in (whole, near):
        for r, xs, ys in curves:
            ax.plot(xs, ys, '-' if r['seed'] == first_seed else '--', marker='o', markersize=3,
                    color=colours[r['variant']], alpha=0.85)
            ax.annotate(f"{r['schedule']:g}x", (xs[-1], ys[-1]), xytext=(3, -10),
                        textcoords='offset points', fontsize=7, color=colours[r['variant']])
        for name, target in tta['targets'].items():
            ax.axhline(100 * target['top1'], color='gray', linestyle=':', linewidth=1)
            ax.annotate(name, (0, 100 * target['top1']), xytext=(2, 2), textcoords='offset points',
                        fontsize=7, color='gray')
        ax.grid(alpha=0.3)
    hits = [(variant, hit) for target in tta['targets'].values()
            for variant, seeds in target['reached'].items() for hit in seeds.values() if hit]
    for variant, hit in hits:
        near.plot(hit['time_s'] / 60, 100 * hit['top1'], marker='*', markersize=11,
                  color=colours[variant], markeredgecolor='black', zorder=3)
    lowest = min((100 * t['top1'] for t in tta['targets'].values()), default=0.0)
    near.set_ylim(max(0.0, lowest - 5), 100.5)
    if hits:
        near.set_xlim(0, 1.5 * max(hit['time_s'] for _, hit in hits) / 60)
    for variant in variants:
        whole.plot([], [], '-', color=colours[variant], label=variant)
    whole.plot([], [], '--', color='gray', label='other seeds')
    near.plot([], [], '*', color='gray', markeredgecolor='black', markersize=11,
              label='target first reached')
    label = 'modeled training time' if basis == 'modeled_time_s' else 'training wall-clock'
    whole.set(xlabel=f'{label} (min)', ylabel='validation top-1 (%)',
              title='Accuracy against training time, every length and seed (labels: length)')
    near.set(xlabel=f'{label} (min)', title='Near the targets')
    whole.legend(fontsize=8, loc='lower right')
    near.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[dict[str, Any]], tta: dict[str, Any], targets: dict[str, Any]) -> str:
    width = max([len('variant')] + [len(r['variant']) for r in runs])
    lines = [f"{'variant':<{width}} {'length':>6} {'seed':>4} {'epochs':>6} {'wall-clock':>11} "
             f"{'modeled':>9} {'iterations':>10} {'top-1':>7}"]
    for r in runs:
        modeled = '-' if r.get('modeled_time_s') is None else f"{r['modeled_time_s']:.0f}s"
        lines.append(f"{r['variant']:<{width}} {r['schedule']:>5g}x {r['seed']:>4d} {r['max_epochs']:>6d} "
                     f"{r['wall_clock_s']:>10.0f}s {modeled:>9} {r['iterations']:>10d} "
                     f"{100 * r['top1']:>6.1f}%")
    for name, entry in tta['targets'].items():
        lines.append(f"time to {100 * entry['top1']:.1f}% top-1 ({name}, {tta['basis']}):")
        for variant, seeds in entry['reached'].items():
            cells = ', '.join(f'seed {s}: ' + ('not reached' if h is None else
                                              f"{h['time_s']:.0f}s ({h['schedule']:g}x, epoch "
                                              f"{h['epoch']} of {h['max_epochs']})")
                              for s, h in seeds.items())
            ratio = entry['ratio'].get(variant)
            lines.append(f'  {variant}: {cells}' + (
                '; ratio ' + ', '.join(f'{v:.2f}x' for v in ratio.values()) if ratio else ''))
    for name, target in targets.items():
        if 'met' in target:
            lines.append(f"target {name}: {'met' if target['met'] else 'NOT met'}")
        else:
            for key, sub in target.items():
                lines.append(f"target {key} ({name}): {'met' if sub['met'] else 'NOT met'}")
    return '\n'.join(lines)


# --- the sweep -----------------------------------------------------------------------------------------
def load_previous(args: argparse.Namespace, preset: dict[str, Any]) -> dict[str, Any] | None:
    """The results of ``--out`` to resume from; refuses a file made with other settings."""
    if not (args.resume and args.out.exists()):
        return None
    previous = json.loads(args.out.read_text())
    differences = [f'{key}: {previous_value!r} there, {value!r} here' for key, previous_value, value in
                   differing(dict(settings=previous['settings'], format=previous['format']),
                             json.loads(json.dumps(dict(settings=preset, format=args.format))))]
    if differences:
        raise SystemExit(f'--resume: {args.out} was made with other settings ('
                         + '; '.join(differences) + '); use another --out')
    return previous


def differing(a: Any, b: Any, prefix: str = '') -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of every entry where the nested dicts differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(prefix, a, b)]
    return [d for key in sorted(set(a) | set(b), key=str)
            for d in differing(a.get(key), b.get(key), f'{prefix}.{key}' if prefix else str(key))]


def commit(paths: list[Path], message: str) -> None:
    """git commit ``paths`` (only them) in the repository that holds them; a failure is printed."""
    cwd = paths[0].parent
    for cmd in (['git', 'add', '--', *map(str, paths)],
                ['git', 'commit', '-q', '-m', message, '--', *map(str, paths)]):
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode:
            print(f"commit skipped ({' '.join(cmd[:2])}: {proc.stderr.strip() or proc.stdout.strip()})",
                  flush=True)
            return


def write(args: argparse.Namespace, results: dict[str, Any]) -> None:
    runs = results['runs']
    results['time_to_accuracy'] = time_to_accuracy(runs, args.fixed_target)
    results['targets'] = check_targets(runs, results['time_to_accuracy'])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n')
    if runs:
        plot(runs, results['time_to_accuracy'], args.plot)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = apply_settings(speedup.PRESETS[args.preset], args.set)
    previous = load_previous(args, preset)
    data = speedup.dataset_paths(args, preset)
    command = ' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    results: dict[str, Any] = previous or dict(
        preset=args.preset, settings=preset, format=args.format, commands=[], runs=[],
        calibration=None)
    runs = results['runs']
    done = {run_key(r) for r in runs}
    todo = [p for p in planned_runs(args, preset) if run_key(p) not in done]
    print(f'{len(runs)} runs kept from {args.out}, {len(todo)} to train: ' + ', '.join(
        f"{p['variant']} {p['schedule']:g}x seed {p['seed']}" for p in todo), flush=True)
    if args.dry_run:
        return results
    if todo or args.calibrate:  # the commands that made the results, not every resume
        results['commands'].append(dict(command=command, machine=speedup.machine(),
                                        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())))
    if args.calibrate:
        variants = {json.dumps(r['hook_options'], sort_keys=True): r['hook_options']
                    for r in runs + todo if r['method'] == 'multigrid'} or {'{}': {}}
        print(f'calibrating {len(variants)} multigrid variant(s) ...', flush=True)
        results['calibration'] = calibrate(preset, data, list(variants.values()), args.calibrate_steps)
        print('seconds per iteration: ' + ', '.join(
            f'{k} {v:.3f}' for k, v in results['calibration']['seconds'].items()), flush=True)
    base = base_key(preset, data)
    for r in runs:
        add_modeled_time(r, results['calibration'], base)
    write(args, results)
    lock = threading.Lock()
    pending = Counter((p['schedule'], p['seed']) for p in todo)

    def train(planned: dict[str, Any]) -> None:
        method, length, seed = planned['method'], planned['schedule'], planned['seed']
        cfg, epochs = run_config(method, planned['preset'], data, seed, args.validations,
                                 planned['hook_options'])
        name = run_name(planned)
        print(f'training {name} ...', flush=True)
        result = speedup.train(method, cfg, args.work_dir / name, preset['threads'], args.resume)
        run = dict(method=method, variant=planned['variant'], hook_options=planned['hook_options'],
                   schedule=length, seed=seed, max_epochs=epochs, concurrent_runs=args.jobs, **result)
        add_modeled_time(run, results['calibration'], base)
        with lock:
            runs.append(run)
            runs.sort(key=run_order)
            print(f"{name}: top-1 {100 * result['top1']:.1f}% in {result['wall_clock_s']:.0f}s",
                  flush=True)
            write(args, results)
            pending[length, seed] -= 1
            if args.commit and not pending[length, seed]:
                commit([args.out, args.plot], f'budget sweep: {length:g}x seed {seed} ('
                       + ', '.join(p['variant'] for p in todo
                                   if (p['schedule'], p['seed']) == (length, seed)) + ')')

    with ThreadPoolExecutor(args.jobs) as pool:
        done_futures, _ = wait([pool.submit(train, p) for p in todo], return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in done_futures if f.exception()]
        if failed:
            pool.shutdown(cancel_futures=True)
            raise failed[0]
    write(args, results)
    print(table(runs, results['time_to_accuracy'], results['targets']))
    print(f'results: {args.out}\nplot:    {args.plot}')
    return results


if __name__ == '__main__':
    main()
