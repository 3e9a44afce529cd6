"""Per-iteration cost of the real R50 I3D and SlowFast 8x8 models at every grid shape of the multigrid plan.

Multigrid assumes that every mini-batch shape costs about the same, because the batch is scaled so that
B*T*S^2 stays constant. This script measures it: for each distinct (B, T, S) of the plan's segments
(world size 8), it times forward + backward + optimizer step (the config's SGD with its gradient
clipping, through mmengine's optimizer wrapper) on random, already normalised inputs of the shape the
data preprocessor hands to the recognizer, ``(B, 1, 3, T, S, S)``, with random labels.

On CPU the full shapes are far too slow, so by default the crop is scaled by ``--scale`` (0.25; each crop
rounded to the nearest pixel) and every batch divided by ``--batch-divisor`` (8); T is never scaled. The
ratios between batches are kept exactly, those between crops up to the rounding (the table shows the
B*T*S^2 actually run). ``--device cuda`` defaults to full resolution and full per-GPU batch and records
peak GPU memory per shape; ``--amp`` (CUDA only) trains as ``tools/train.py --amp`` does, under
mmengine's ``AmpOptimWrapper`` (float16 autocast, dynamic loss scaling). On a loaded CPU machine
``--threads 1`` avoids OpenMP oversubscription.

    python benchmarks/shape_cost.py --threads 1 --out benchmarks/results/shape_cost_cpu.json
    python benchmarks/shape_cost.py --device cuda [--amp] --out shape_cost_cuda.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import mmmultigrid  # noqa: F401  (repairs `import mmaction.models` of the PyPI wheel first)
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.optim import OptimWrapper
from mmaction.utils import register_all_modules
from mmmultigrid.baseline import plan_from_config
from mmmultigrid.plan import GridShape
from mmmultigrid.engine.step_time import build_trainable, time_train_steps

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 8
MODEL_CONFIGS = {
    'i3d': ('mmaction::recognition/i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py',
            'configs/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_multigrid.py'),
    'slowfast': ('mmaction::recognition/slowfast/slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb.py',
                 'configs/slowfast_r50_8xb8-8x8x1-steplr-239e_kinetics400-rgb_multigrid.py'),
}
CPU_DEFAULTS = dict(scale=0.25, batch_divisor=8)
CUDA_DEFAULTS = dict(scale=1.0, batch_divisor=1)


def plan_shapes(multigrid_config: str, world_size: int = WORLD_SIZE) -> tuple[list[GridShape], GridShape]:
    """The distinct per-GPU (B, T, S) of the plan's segments, in order of first use, and the base shape."""
    plan = plan_from_config(Config.fromfile(str(REPO / multigrid_config)), world_size)
    shapes: list[GridShape] = []
    for segment in plan.segments:
        for shape in segment.shapes:
            if shape not in shapes:
                shapes.append(shape)
    return shapes, GridShape(plan.base.batch_size, plan.base.clip_len, plan.base.crop_size)


def scale_shape(shape: GridShape, scale: float, batch_divisor: int) -> GridShape:
    """``shape`` with its crop scaled (rounded) and its batch divided exactly by ``batch_divisor``."""
    if shape.batch_size % batch_divisor:
        raise ValueError(f'--batch-divisor {batch_divisor} does not divide batch {shape.batch_size}: '
                         'the ratios between shapes would change')
    crop = max(1, round(shape.crop_size * scale))
    return GridShape(shape.batch_size // batch_divisor, shape.clip_len, crop)


def build_model(model_config: str, device: torch.device,
                amp: bool = False) -> tuple[torch.nn.Module, OptimWrapper, int]:
    """The recognizer of ``model_config`` (an ``mmaction::`` config or a path relative to the
    repository) without pretrained weights, its optimizer wrapper (the one ``tools/train.py --amp``
    configures with ``amp``) and its number of classes."""
    register_all_modules()
    cfg = get_config(model_config) if '::' in model_config else Config.fromfile(str(REPO / model_config))
    if amp:
        cfg.optim_wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
    return build_trainable(cfg, device)


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu,
        'cpu': cpu,
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'python': platform.python_version(),
        'platform': platform.platform(),
    }


def benchmark_model(name: str, device: torch.device, scale: float, batch_divisor: int, warmup: int,
                    repeats: int, amp: bool = False) -> dict[str, Any]:
    """Every plan shape of model ``name``: iteration time, time and B*T*S^2 relative to the base, clips/s.

    The shapes are timed round-robin (``warmup`` untimed rounds, then ``repeats`` timed rounds of one
    iteration per shape), so that load from other processes spreads over all shapes alike.
    """
    model_config, multigrid_config = MODEL_CONFIGS[name]
    full, base_shape = plan_shapes(multigrid_config)
    torch.manual_seed(0)
    model, optim_wrapper, num_classes = build_model(model_config, device, amp)
    runs = [scale_shape(shape, scale, batch_divisor) for shape in full]
    times, peaks = time_train_steps(model, optim_wrapper, runs, num_classes, repeats, warmup,
                                    restore=False)
    rows = []
    for shape, run, shape_times, shape_peaks in zip(full, runs, times, peaks):
        mean = statistics.fmean(shape_times)
        row = {'full_shape': vars(shape), 'run_shape': vars(run), 'volume': run.volume,
               'iteration_time_s': mean, 'min_iteration_time_s': min(shape_times),
               'clips_per_s': run.batch_size / mean, 'iteration_times_s': shape_times}
        if shape_peaks:
            row['peak_memory_mib'] = max(shape_peaks)
        rows.append(row)
    base = rows[full.index(base_shape)]
    for row in rows:
        row['volume_rel'] = row['volume'] / base['volume']
        row['time_rel'] = row['iteration_time_s'] / base['iteration_time_s']
        row['min_time_rel'] = row['min_iteration_time_s'] / base['min_iteration_time_s']
    return {'model_config': model_config, 'multigrid_config': multigrid_config,
            'base_shape': base['full_shape'], 'shapes': rows}


def format_table(name: str, result: dict[str, Any]) -> str:
    """Markdown table of one model's shapes."""
    memory = 'peak_memory_mib' in result['shapes'][0]
    head = ['shape B x T x S (full)', 'run B x T x S', 'B*T*S^2 rel', 'mean iter (s)', 'time rel',
            'min iter (s)', 'min rel', 'clips/s']
    head += ['peak mem (MiB)'] if memory else []
    lines = [f'**{name}**', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in result['shapes']:
        f, r = row['full_shape'], row['run_shape']
        cells = [f"{f['batch_size']} x {f['clip_len']} x {f['crop_size']}",
                 f"{r['batch_size']} x {r['clip_len']} x {r['crop_size']}",
                 f"{row['volume_rel']:.3f}", f"{row['iteration_time_s']:.3f}", f"{row['time_rel']:.2f}",
                 f"{row['min_iteration_time_s']:.3f}", f"{row['min_time_rel']:.2f}",
                 f"{row['clips_per_s']:.1f}"]
        cells += [f"{row['peak_memory_mib']:.0f}"] if memory else []
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', choices=sorted(MODEL_CONFIGS), default=['i3d', 'slowfast'])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--amp', action='store_true',
                        help="train under mmengine's AmpOptimWrapper, as tools/train.py --amp (CUDA only)")
    parser.add_argument('--scale', type=float, default=None,
                        help='crop scale (default 0.25 on cpu, 1 on cuda)')
    parser.add_argument('--batch-divisor', type=int, default=None,
                        help='divides every per-GPU batch (default 8 on cpu, 1 on cuda)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations per shape')
    parser.add_argument('--repeats', type=int, default=3, help='timed iterations per shape')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch intra-op threads (default: torch's own); 1 avoids OpenMP "
                             'oversubscription on a loaded machine')
    parser.add_argument('--out', type=Path, help='write all figures and machine info as JSON here')
    args = parser.parse_args(argv)
    defaults = CUDA_DEFAULTS if args.device == 'cuda' else CPU_DEFAULTS
    args.scale = defaults['scale'] if args.scale is None else args.scale
    args.batch_divisor = defaults['batch_divisor'] if args.batch_divisor is None else args.batch_divisor
    if (args.scale <= 0 or args.batch_divisor < 1 or args.warmup < 0 or args.repeats < 1
            or (args.threads is not None and args.threads < 1)):
        parser.error('need --scale > 0, --batch-divisor >= 1, --warmup >= 0, --repeats >= 1, --threads >= 1')
    if args.amp and args.device != 'cuda':
        parser.error("--amp needs --device cuda: mmengine's AmpOptimWrapper does not run on CPU")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark ``args.models``, printing one table per model; returns the JSON document."""
    device = torch.device(args.device)
    start = time.perf_counter()
    models = {}
    for name in args.models:
        models[name] = benchmark_model(name, device, args.scale, args.batch_divisor, args.warmup,
                                       args.repeats, args.amp)
        print(format_table(name, models[name]) + '\n', flush=True)
    return {
        'command': 'python benchmarks/shape_cost.py ' + ' '.join(args.argv),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'machine': machine_info(device),
        'settings': {'device': args.device, 'amp': args.amp, 'scale': args.scale,
                     'batch_divisor': args.batch_divisor, 'warmup': args.warmup, 'repeats': args.repeats,
                     'threads': torch.get_num_threads(), 'world_size': WORLD_SIZE,
                     'scaled': 'crop x scale (rounded), batch / batch_divisor; T unchanged'},
        'models': models,
        'total_time_s': time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``--out``; returns the JSON document. Restores torch's thread count."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device available')
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        document = run(args)
    finally:
        torch.set_num_threads(threads)
    print(f"total {document['total_time_s']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + '\n')
    return document


if __name__ == '__main__':
    main()
