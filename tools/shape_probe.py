"""Before a long multigrid run: does each long-cycle grid shape teach your data?

Trains the config as the plain baseline at each long-cycle shape (T x S) of its multigrid plan and at
the base shape, with the base batch and LR, for a short schedule (``--epochs``), one after the other
through ``tools/train.py``, validating at the probed shape; then prints top-1 per shape and epoch
against the base shape's (``mmmultigrid/engine/shape_probe.py`` says how each probe config is made).
A shape that stays far below the base shape at the same epoch teaches this data slowly: multigrid's
epochs there are worth little, and a long cycle without it (``MultigridHook.long_cycle_factors``) may
reach the baseline's accuracy sooner (README, "Choosing the grid").

Examples::

    python tools/shape_probe.py configs/synthetic_r3d_multigrid.py --epochs 12
    python tools/shape_probe.py CONFIG --epochs 8 --shapes 4x160 8x224 --work-dir work_dirs/probe
    python tools/shape_probe.py CONFIG --dry-run      # the shapes and the probe configs, no training
    python tools/shape_probe.py CONFIG --epochs 12 --resume  # keep the probes that already finished

Each probe's final weights are also tested at the base shape, with BN statistics recomputed there from
``--precise-bn`` training batches (``top1_at_base``): what its shape taught that the base shape can use.
A shape whose weights keep less than ``--min-share`` of their own top-1 there is named, with the
``long_cycle_factors`` of the plan without it.

Results: ``WORK_DIR/shape_probe.json`` (shapes, validation curves) and each probe's work dir
``WORK_DIR/T<T>_I<I>_S<S>``. Config errors print ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import subprocess
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import mmmultigrid  # noqa: E402,F401  (stack fixes and registries before the config is read)
from mmengine.config import Config, DictAction  # noqa: E402

from mmmultigrid.baseline import load_config, plan_from_config, train_transforms  # noqa: E402
from mmmultigrid.data.pipeline import describe_pipeline  # noqa: E402
from mmmultigrid.engine.run_scalars import latest_test_metrics  # noqa: E402
from mmmultigrid.engine.shape_probe import (DEFAULT_MIN_SHARE, format_advice, format_probes,  # noqa: E402
                                            long_cycle_shapes, parse_shape, probe_config,
                                            share_at_base, transfer_config, validation_curve)

TRAIN = Path(__file__).resolve().parent / 'train.py'
TEST = Path(__file__).resolve().parent / 'test.py'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path (with or without the multigrid lines)')
    parser.add_argument('--epochs', type=int, default=12, help='epochs of each probe')
    parser.add_argument('--shapes', nargs='+', metavar='TxS',
                        help="probe these shapes (and the base shape) instead of the plan's long cycle")
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs') / 'shape_probe')
    parser.add_argument('--seed', type=int, default=0, help='training seed of every probe')
    parser.add_argument('--precise-bn', type=int, default=32, metavar='BATCHES',
                        help='training batches at the base shape from which BN statistics are '
                        "recomputed before a probe's weights are tested there")
    parser.add_argument('--min-share', type=float, default=DEFAULT_MIN_SHARE, metavar='SHARE',
                        help='name the shapes whose weights keep less than this share of their own '
                             'top-1 at the base shape, and the long cycle without them')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs merged into the config')
    parser.add_argument('--resume', action='store_true',
                        help='keep a probe whose work dir already holds a finished run of the same '
                             'probe config (seed included) instead of training it again, and its '
                             'finished test at the base shape')
    parser.add_argument('--dry-run', action='store_true',
                        help='write the probe configs and print the shapes, without training')
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f'--epochs must be >= 1, got {args.epochs}')
    if args.precise_bn < 1:
        parser.error(f'--precise-bn must be >= 1, got {args.precise_bn}')
    if not 0 < args.min_share <= 1:
        parser.error(f'--min-share must be in (0, 1], got {args.min_share}')
    return args


def run_tool(tool: Path, args: list[str], log_path: Path) -> None:
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable, str(tool), *args], stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f'{tool.name} failed for the probe {log_path.parent.name} (exit status '
                         f'{proc.returncode}); its log: {log_path}')


def top1_at_base(base_probe: Config, work_dir: Path, epochs: int, precise_bn: int,
                 reuse: bool = False) -> float:
    """The probe's final checkpoint validated at the base shape (``tools/test.py``), BN statistics
    recomputed there from ``precise_bn`` training batches. ``reuse``: a test of the same config that
    already finished in ``work_dir`` (of a probe kept by ``--resume``) gives the figure instead."""
    config = work_dir / 'at_base.py'
    test = transfer_config(base_probe, work_dir / f'epoch_{epochs}.pth', precise_bn)
    if reuse and holds(config, test):
        try:
            top1 = float(latest_test_metrics(work_dir / 'at_base')['acc/top1'])
        except (FileNotFoundError, KeyError):
            pass
        else:
            print(f'{work_dir.name}: its test at the base shape kept as well', flush=True)
            return top1
    test.dump(config)
    run_tool(TEST, [str(config), str(work_dir / f'epoch_{epochs}.pth'), '--work-dir',
                    str(work_dir / 'at_base')], work_dir / 'at_base.log')
    return float(latest_test_metrics(work_dir / 'at_base')['acc/top1'])


def holds(path: Path, cfg: Config) -> bool:
    """Whether the config file ``path`` is ``cfg``, leaving out the ``launcher`` and ``work_dir`` that
    ``tools/train.py`` adds when it dumps the config it ran."""
    if not path.is_file():
        return False
    ran = {k: v for k, v in Config.fromfile(path).to_dict().items() if k not in ('launcher', 'work_dir')}
    return Config(ran).pretty_text == Config(cfg.to_dict()).pretty_text


def finished_curve(config: Path, probe: Config, epochs: int) -> list[dict[str, float]] | None:
    """The validation curve of the run in ``config``'s folder if ``config``, as ``tools/train.py``
    dumped it, is ``probe`` and that run validated its last epoch; else None."""
    if not holds(config, probe):
        return None
    try:
        curve = validation_curve(config.parent)
    except FileNotFoundError:
        return None
    return curve if curve and curve[-1]['epoch'] == epochs else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        base = describe_pipeline(train_transforms(cfg), 'train_dataloader.dataset.pipeline')
        plan = plan_from_config(cfg, 1)
        shapes = long_cycle_shapes(plan, base)
        if args.shapes:  # the given shapes, then the base shape (the last of the plan's)
            shapes = [s for s in (parse_shape(text, base) for text in args.shapes)
                      if not s.is_base] + shapes[-1:]
        configs = {shape: probe_config(cfg, shape, args.epochs) for shape in shapes}
        for probe in configs.values():
            probe.randomness = dict(probe.get('randomness') or {}, seed=args.seed)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f'error: {exc}'.replace('\n', ' '), file=sys.stderr)
        return 2
    curves, kept = {}, set()
    for shape, probe in configs.items():
        work_dir = args.work_dir / shape.name
        work_dir.mkdir(parents=True, exist_ok=True)
        config = work_dir / 'probe.py'
        finished = finished_curve(config, probe, args.epochs) if args.resume else None
        if finished is not None:
            print(f'probe {shape}: kept, {work_dir} holds its finished run', flush=True)
            curves[shape] = finished
            kept.add(shape)
            continue
        probe.dump(config)
        print(f'probe {shape}: {config}', flush=True)
        if not args.dry_run:
            run_tool(TRAIN, [str(config), '--work-dir', str(work_dir)], work_dir / 'train.log')
            curves[shape] = validation_curve(work_dir)
    if args.dry_run:
        return 0
    base_shape = next(s for s in configs if s.is_base)
    at_base = {shape: top1_at_base(configs[base_shape], args.work_dir / shape.name, args.epochs,
                                   args.precise_bn, reuse=shape in kept)
               for shape in curves if not shape.is_base}
    advice = format_advice(plan, curves, at_base, args.min_share)
    (args.work_dir / 'shape_probe.json').write_text(json.dumps(dict(
        config=str(args.config), epochs=args.epochs, seed=args.seed, precise_bn=args.precise_bn,
        probes=[dict(clip_len=s.clip_len, frame_interval=s.frame_interval, crop_size=s.crop_size,
                     base=s.is_base, validation_curve=c, top1_at_base=at_base.get(s),
                     share_at_base=share_at_base(c, at_base[s]) if s in at_base else None)
                for s, c in curves.items()],
        advice=advice), indent=2) + '\n')
    print(format_probes(curves, at_base))
    print(advice)
    return 0


if __name__ == '__main__':
    sys.exit(main())
