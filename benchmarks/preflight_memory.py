"""MultigridHook's CUDA preflight memory check, for real, on the R50 I3D and SlowFast 8x8 plans.

For each model (the configs of ``shape_cost.py``, random weights, plan at world size 8) batch norm is
switched to groups as the hook does, then :func:`mmmultigrid.engine.preflight.check_memory` runs at full size:
one forward/backward at the largest-batch and at the largest-volume grid shape, under the training's
autocast with ``--amp``, each logging its peak memory. Then the check runs with every per-GPU batch 2, 4,
8, ... times larger until it stops, which must be a ``PreflightError`` saying the shape runs out of GPU
memory and naming the config key; no such error up to ``--max-factor``, another error or a crash is a
failure (exit status 1, after writing ``--out``).

The check is CUDA only: with ``--device cpu`` (the dry run of ``benchmarks/device_check.sh``) the models
and plans are built and the check is recorded as skipped.

    python benchmarks/preflight_memory.py --device cuda [--amp] --out preflight_memory.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.engine.preflight import PreflightError, check_memory
from shape_cost import MODEL_CONFIGS, REPO, WORLD_SIZE, build_model, machine_info


class _Collect(logging.Handler):
    """Keeps the messages of the preflight log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith('preflight:'):
            self.lines.append(record.getMessage())


def check_model(name: str, device: torch.device, amp: bool, max_factor: int) -> dict[str, Any]:
    """Both checks for model ``name``; ``ok`` says whether each behaved as it must."""
    model_config, multigrid_config = MODEL_CONFIGS[name]
    cfg = Config.fromfile(str(REPO / multigrid_config))
    plan = plan_from_config(cfg, WORLD_SIZE)
    model, optim_wrapper, _ = build_model(model_config, device, amp)
    use_grouped_batchnorm(model, plan.options.bn_base_size)
    if device.type != 'cuda':
        return {'ok': True, 'skipped': 'check_memory runs on CUDA only'}
    runner = SimpleNamespace(model=model, optim_wrapper=optim_wrapper)
    collect = _Collect()
    logger = MMLogger.get_current_instance()
    logger.addHandler(collect)
    try:
        try:
            check_memory(runner, plan)
            fits = {'ok': True, '1x': list(collect.lines)}
        except PreflightError as error:
            fits = {'ok': False, 'error': str(error)}
        base_batch = cfg.train_dataloader.batch_size
        too_large = {'ok': False, 'error': f'no PreflightError up to {max_factor}x the batch'}
        factor = 2
        while factor <= max_factor:
            cfg.train_dataloader.batch_size = base_batch * factor
            collect.lines.clear()
            try:
                check_memory(runner, plan_from_config(cfg, WORLD_SIZE))
            except PreflightError as error:
                message = str(error)
                too_large = {'ok': 'runs out of GPU memory' in message
                             and 'train_dataloader.batch_size' in message,
                             'factor': factor, 'batch_size': base_batch * factor, 'error': message}
                break
            fits[f'{factor}x'] = list(collect.lines)
            factor *= 2
    finally:
        logger.removeHandler(collect)
    return {'ok': fits['ok'] and too_large['ok'], 'fits': fits, 'too_large': too_large}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', choices=sorted(MODEL_CONFIGS), default=['i3d', 'slowfast'])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda')
    parser.add_argument('--amp', action='store_true',
                        help="run the check under mmengine's AmpOptimWrapper, as tools/train.py --amp "
                        '(CUDA only)')
    parser.add_argument('--max-factor', type=int, default=32,
                        help='largest per-GPU batch multiplier tried for the check that must run out '
                        'of memory')
    parser.add_argument('--out', type=Path, help='write the results as JSON here')
    args = parser.parse_args(argv)
    if args.amp and args.device != 'cuda':
        parser.error("--amp needs --device cuda: mmengine's AmpOptimWrapper does not run on CPU")
    if args.max_factor < 2:
        parser.error('--max-factor must be >= 2')
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the checks, write ``--out``; exits with status 1 when a check did not behave."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device available')
    models = {name: check_model(name, device, args.amp, args.max_factor) for name in args.models}
    document = {
        'command': 'python benchmarks/preflight_memory.py ' +
                   ' '.join(sys.argv[1:] if argv is None else argv),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'machine': machine_info(device),
        'settings': {'device': args.device, 'amp': args.amp, 'max_factor': args.max_factor,
                     'world_size': WORLD_SIZE},
        'models': models,
        'ok': all(result['ok'] for result in models.values()),
    }
    print(json.dumps(models, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + '\n')
    if not document['ok']:
        raise SystemExit('preflight_memory: a check did not behave as it must (see "ok" above)')
    return document


if __name__ == '__main__':
    main()
