"""Budget sweep: the same recipe as baseline and as multigrid at several schedule lengths, in one invocation.

Each length factor L scales the preset's epochs, LR milestones and warmup by L; the baseline and
multigrid runs of a length train one after the other through ``tools/train.py`` (``speedup.train``), on
the same data and seed. ``--extra-seeds`` repeats the longest pair with other training seeds, to show the
noise. The JSON holds every run; the PNG shows final top-1 against training wall-clock for both methods
(the paper's accuracy-vs-time figure), each point labelled with its length. The targets of issue 11 are
checked and printed:

* at the longest length, multigrid top-1 >= baseline top-1 - 1 point (every seed);
* every multigrid run >= 2.8x faster than the baseline run of the same length and seed;
* no baseline point more than 1 point above the multigrid curve at equal or lower wall-clock.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import speedup  # noqa: E402  (puts the repository on sys.path and repairs the OpenMMLab stack)
from accuracy_probe import apply_settings  # noqa: E402
from mmengine.config import Config  # noqa: E402

from mmmultigrid.baseline import plan_from_config  # noqa: E402

METHODS = ('baseline', 'multigrid')
MIN_SPEEDUP = 2.8
MAX_GAP = 0.01  # top-1, as a fraction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', choices=sorted(speedup.PRESETS), default='default')
    parser.add_argument('--set', nargs='+', default=[], metavar='SECTION.KEY=VALUE',
                        help='change preset entries, e.g. schedule.lr=0.05 workers=0')
    parser.add_argument('--lengths', type=float, nargs='+', default=[1, 2, 4],
                        help='schedule length factors (epochs, milestones and warmup scaled)')
    parser.add_argument('--extra-seeds', type=int, nargs='*', default=[1],
                        help='training seeds of repeated runs of the longest length')
    parser.add_argument('--validations', type=int, default=3, help='validations per run')
    parser.add_argument('--work-dir', type=Path, default=speedup.REPO / 'work_dirs' / 'budget_sweep')
    parser.add_argument('--out', type=Path, help='JSON results (default: WORK_DIR/budget_sweep.json)')
    parser.add_argument('--plot', type=Path, help='PNG (default: next to --out)')
    speedup.add_data_arguments(parser)
    args = parser.parse_args(argv)
    if any(length <= 0 for length in args.lengths) or len(set(args.lengths)) != len(args.lengths):
        parser.error(f'--lengths must be distinct positive factors, got {args.lengths}')
    if args.validations < 1:
        parser.error(f'--validations must be >= 1, got {args.validations}')
    args.lengths = sorted(args.lengths)
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


def run_config(method: str, preset: dict[str, Any], data: dict[str, Any], seed: int,
               validations: int) -> tuple[Config, int]:
    """(config, epochs) of one run: ``speedup.build_config`` with the seed and the validation points;
    a multigrid run's epochs are those of its plan."""
    cfg = speedup.build_config(method, preset, data)
    cfg.randomness.seed = seed
    epochs = (plan_from_config(cfg, 1).max_epochs if method == 'multigrid'
              else preset['schedule']['max_epochs'])
    speedup.set_validation(cfg, epochs, validations)
    return cfg, epochs


def planned_runs(args: argparse.Namespace, preset: dict[str, Any]) -> list[dict[str, Any]]:
    """(method, length, seed, preset) of every run, in the order they train."""
    seed = Config.fromfile(speedup.CONFIGS['baseline']).randomness.seed
    runs = []
    for length in args.lengths:
        for s in [seed] + (list(args.extra_seeds) if length == args.lengths[-1] else []):
            sized = dict(copy.deepcopy(preset), schedule=scaled_schedule(preset['schedule'], length))
            runs += [dict(method=m, schedule=length, seed=s, preset=sized) for m in METHODS]
    return runs


def check_targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The three targets of the sweep, each with the figures it was decided on."""
    by_key = {(r['method'], r['schedule'], r['seed']): r for r in runs}
    longest = max(r['schedule'] for r in runs)
    pairs = [(by_key[('baseline', length, seed)], mg) for (method, length, seed), mg in by_key.items()
             if method == 'multigrid' and ('baseline', length, seed) in by_key]
    parity = [dict(seed=b['seed'], baseline=b['top1'], multigrid=m['top1'],
                   gap=b['top1'] - m['top1']) for b, m in pairs if b['schedule'] == longest]
    speed = [dict(schedule=b['schedule'], seed=b['seed'],
                  speedup=b['wall_clock_s'] / m['wall_clock_s']) for b, m in pairs]
    seed = min(r['seed'] for r in runs)
    curve = [(r['wall_clock_s'], r['top1']) for r in runs
             if r['method'] == 'multigrid' and r['seed'] == seed]
    above = []
    for b in runs:
        if b['method'] == 'baseline' and b['seed'] == seed:
            level = speedup.curve_at(curve, b['wall_clock_s'])
            if level is not None:
                above.append(dict(schedule=b['schedule'], baseline=b['top1'], multigrid_curve=level,
                                  above=b['top1'] - level))
    return dict(
        parity=dict(met=bool(parity) and all(p['gap'] <= MAX_GAP for p in parity), runs=parity),
        speedup=dict(met=bool(speed) and all(s['speedup'] >= MIN_SPEEDUP for s in speed),
                     runs=speed),
        curve=dict(met=all(a['above'] <= MAX_GAP for a in above), points=above))


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seed = min(r['seed'] for r in runs)
    for method, style in zip(METHODS, ('o-', 's-')):
        main = sorted((r for r in runs if r['method'] == method and r['seed'] == seed),
                      key=lambda r: r['wall_clock_s'])
        line = ax.plot([r['wall_clock_s'] / 60 for r in main], [100 * r['top1'] for r in main], style,
                       label=method)[0]
        for r in main:
            ax.annotate(f"{r['schedule']:g}x", (r['wall_clock_s'] / 60, 100 * r['top1']),
                        xytext=(4, -12), textcoords='offset points', fontsize=8)
        repeats = [r for r in runs if r['method'] == method and r['seed'] != seed]
        if repeats:
            ax.plot([r['wall_clock_s'] / 60 for r in repeats], [100 * r['top1'] for r in repeats],
                    style[0], color=line.get_color(), fillstyle='none',
                    label=f'{method}, other seeds')
    ax.set(xlabel='training wall-clock (min)', ylabel='final validation top-1 (%)',
           title='Accuracy against training time (labels: schedule length)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[dict[str, Any]], targets: dict[str, Any]) -> str:
    lines = [f"{'method':<10} {'length':>6} {'seed':>4} {'epochs':>6} {'wall-clock':>11} "
             f"{'iterations':>10} {'top-1':>7} {'data wait':>9}"]
    for r in runs:
        lines.append(f"{r['method']:<10} {r['schedule']:>5g}x {r['seed']:>4d} {r['max_epochs']:>6d} "
                     f"{r['wall_clock_s']:>10.1f}s {r['iterations']:>10d} {100 * r['top1']:>6.1f}% "
                     f"{100 * r['data_wait_share']:>8.1f}%")
    for name, target in targets.items():
        lines.append(f"target {name}: {'met' if target['met'] else 'NOT met'}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = apply_settings(speedup.PRESETS[args.preset], args.set)
    data = speedup.dataset_paths(args, preset)
    runs = []
    results: dict[str, Any] = dict(
        preset=args.preset, set=args.set, settings=preset, format=args.format, lengths=args.lengths,
        extra_seeds=args.extra_seeds,
        machine=speedup.machine(), date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        command=' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        runs=runs)
    for planned in planned_runs(args, preset):
        method, length, seed = planned['method'], planned['schedule'], planned['seed']
        cfg, epochs = run_config(method, planned['preset'], data, seed, args.validations)
        name = f'{method}_x{length:g}_seed{seed}'
        print(f'training {name} ...', flush=True)
        result = speedup.train(method, cfg, args.work_dir / name, preset['threads'])
        runs.append(dict(method=method, schedule=length, seed=seed, max_epochs=epochs, **result))
        print(f"{name}: top-1 {100 * result['top1']:.1f}% in {result['wall_clock_s']:.0f}s",
              flush=True)
        # written after every run, so a long sweep that is stopped keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results['targets'] = check_targets(runs)
        args.out.write_text(json.dumps(results, indent=2) + '\n')
    plot(runs, args.plot)
    print(table(runs, results['targets']))
    print(f'results: {args.out}\nplot:    {args.plot}')
    return results


if __name__ == '__main__':
    main()
