"""Compile time and steady-state speed at every grid shape, for each way of compiling a multigrid run.

Strategies (``--strategies``):

- ``eager``: no compile, the reference;
- ``train_step``: ``torch.compile(model.train_step)``, what mmengine's ``compile=True`` does on its own,
  with dynamo's defaults (``recompile_limit`` 8, automatic dynamic shapes);
- ``static``, ``automatic``, ``dynamic``: what ``MultigridHook`` does with ``compile`` in the config
  (the backbone, ``compile.dynamic`` False / None / True; see ``mmmultigrid/models/compile.py``).

For each strategy a fresh model (same seed, batch norm in groups as the hook makes it) runs one training
iteration per grid shape in order of first use (``model.train_step`` as mmengine's loop calls it: data
preprocessor, forward, loss, backward, the config's optimizer step; uint8 clips and labels as the loader
gives them). That first iteration, compile included, is ``first_s``; then ``--repeats`` rounds of one
iteration per shape give ``steady_s`` (mean). Dynamo's counters after each strategy give its graphs,
graph breaks and what it gave up on (``unimplemented``: skipped frames, recompile limit reached). ``--out``
is rewritten after each strategy and each shape's first iteration, so a run cut short keeps what it
measured (``complete`` says whether a strategy finished).

Models: ``r3d``, the synthetic config's slim ResNet3d-18 and its multigrid plan on 1 GPU; ``i3d`` and
``slowfast`` as in ``shape_cost.py`` (plan on 8 GPUs, ``--scale`` / ``--batch-divisor`` shrink them).

    python benchmarks/compile_cost.py --threads 1 --out benchmarks/results/compile_cost_cpu.json
    python benchmarks/compile_cost.py --device cuda --amp --strategies eager static \\
        --out compile_cost_cuda.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from mmaction.structures import ActionDataSample
from mmengine.optim import OptimWrapper
from torch._dynamo.utils import counters

from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.models.compile import compile_backbone
from mmmultigrid.plan import GridShape, MultigridOptions
from mmmultigrid.engine.step_time import sync
from shape_cost import MODEL_CONFIGS, WORLD_SIZE, build_model, machine_info, plan_shapes, scale_shape

#: name: (model config, multigrid config, world size of the plan)
MODELS = {'r3d': ('configs/synthetic_r3d_baseline.py', 'configs/synthetic_r3d_multigrid.py', 1),
          **{name: (*configs, WORLD_SIZE) for name, configs in MODEL_CONFIGS.items()}}
#: MultigridHook's strategies: the ``compile.dynamic`` each one stands for.
HOOK_STRATEGIES = {'static': False, 'automatic': None, 'dynamic': True}
STRATEGIES = ['eager', 'train_step', *HOOK_STRATEGIES]


def make_data(shape: GridShape, num_classes: int) -> dict[str, list]:
    """A batch as the loader hands it to ``train_step``: uint8 clips ``(1, 3, T, S, S)`` and labels."""
    inputs = [torch.randint(0, 256, (1, 3, shape.clip_len, shape.crop_size, shape.crop_size),
                            dtype=torch.uint8) for _ in range(shape.batch_size)]
    labels = torch.randint(num_classes, (shape.batch_size, )).tolist()
    return {'inputs': inputs,
            'data_samples': [ActionDataSample().set_gt_label(label) for label in labels]}


def iteration(model: torch.nn.Module, optim_wrapper: OptimWrapper, data: dict,
              device: torch.device) -> float:
    """Seconds of one ``model.train_step``."""
    sync(device)
    start = time.perf_counter()
    model.train_step(data, optim_wrapper)
    sync(device)
    return time.perf_counter() - start


def run_strategy(strategy: str, model_name: str, shapes: list[GridShape], device: torch.device,
                 amp: bool, backend: str, repeats: int,
                 progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every shape's first and steady-state iteration time under ``strategy``, and dynamo's counters.

    ``progress`` gets ``{'complete': False, 'first_s': [...]}`` after each shape's first iteration, so
    that a run cut short during compilation keeps the shapes it compiled.
    """
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model, optim_wrapper, num_classes = build_model(MODELS[model_name][0], device, amp)
    use_grouped_batchnorm(model, MultigridOptions().bn_base_size)  # the shipped configs' setting
    if strategy == 'train_step':
        model.train_step = torch.compile(model.train_step, backend=backend)
    elif strategy != 'eager':
        compile_backbone(model, len(shapes), dict(backend=backend, dynamic=HOOK_STRATEGIES[strategy]))
    batches = [make_data(shape, num_classes) for shape in shapes]
    start = time.perf_counter()
    first: list[float] = []
    for data in batches:
        first.append(iteration(model, optim_wrapper, data, device))
        progress({'complete': False, 'first_s': first})
    steady: list[list[float]] = [[] for _ in shapes]
    for _ in range(repeats):
        for times, data in zip(steady, batches):
            times.append(iteration(model, optim_wrapper, data, device))
    rows = [{'run_shape': vars(shape), 'first_s': f, 'steady_s': statistics.fmean(t),
             'steady_min_s': min(t), 'steady_times_s': t}
            for shape, f, t in zip(shapes, first, steady)]
    return {
        'complete': True,
        'shapes': rows,
        'first_total_s': sum(first),
        'steady_total_s': sum(row['steady_s'] for row in rows),
        'wall_s': time.perf_counter() - start,
        'graphs': counters['stats']['unique_graphs'],
        'graph_breaks': sum(counters['graph_break'].values()),
        'unimplemented': {reason.split('\n')[0]: count
                          for reason, count in counters['unimplemented'].items()},
    }


def format_table(document: dict[str, Any]) -> str:
    """Markdown: per shape, first and steady-state seconds of each strategy; then graphs and breaks."""
    strategies = document['strategies']
    head = ['run B x T x S'] + [f'{name} first / steady (s)' for name in strategies]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for i, shape in enumerate(document['run_shapes']):
        cells = [f"{shape['batch_size']} x {shape['clip_len']} x {shape['crop_size']}"]
        cells += [f"{r['shapes'][i]['first_s']:.2f} / {r['shapes'][i]['steady_s']:.3f}"
                  for r in strategies.values()]
        lines.append('| ' + ' | '.join(cells) + ' |')
    for key in ('first_total_s', 'steady_total_s', 'graphs', 'graph_breaks'):
        lines.append('| ' + ' | '.join([key] + [f'{r[key]:.2f}' if isinstance(r[key], float)
                                                else str(r[key]) for r in strategies.values()]) + ' |')
    lines.append('| gave up | ' + ' | '.join(
        '; '.join(f'{n}x {reason}' for reason, n in r['unimplemented'].items()) or 'nothing'
        for r in strategies.values()) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=sorted(MODELS), default='r3d')
    parser.add_argument('--strategies', nargs='+', choices=STRATEGIES,
                        default=['eager', 'train_step', 'static', 'automatic'],
                        help="'dynamic' is left out by default: tracing SlowFast with it did not finish")
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--amp', action='store_true',
                        help="train under mmengine's AmpOptimWrapper, as tools/train.py --amp (CUDA only)")
    parser.add_argument('--backend', default='inductor', help="torch.compile backend ('eager' for tests)")
    parser.add_argument('--scale', type=float, default=1.0, help='crop scale')
    parser.add_argument('--batch-divisor', type=int, default=1, help='divides every per-GPU batch')
    parser.add_argument('--repeats', type=int, default=3, help='steady-state rounds over all shapes')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
    parser.add_argument('--out', type=Path, help='write all figures and machine info as JSON here')
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.batch_divisor < 1 or args.repeats < 1 or (args.threads or 1) < 1:
        parser.error('need --scale > 0, --batch-divisor >= 1, --repeats >= 1, --threads >= 1')
    if args.amp and args.device != 'cuda':
        parser.error("--amp needs --device cuda: mmengine's AmpOptimWrapper does not run on CPU")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every strategy, printing a table; returns the JSON document (also written to ``--out``)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device available')
    _, multigrid_config, world_size = MODELS[args.model]
    full, _ = plan_shapes(multigrid_config, world_size)
    shapes = [scale_shape(shape, args.scale, args.batch_divisor) for shape in full]
    document: dict[str, Any] = {
        'command': 'python benchmarks/compile_cost.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'machine': machine_info(device),
        'settings': {'model': args.model, 'device': args.device, 'amp': args.amp, 'backend': args.backend,
                     'scale': args.scale, 'batch_divisor': args.batch_divisor, 'repeats': args.repeats,
                     'threads': args.threads or torch.get_num_threads(), 'world_size': world_size},
        'full_shapes': [vars(shape) for shape in full],
        'run_shapes': [vars(shape) for shape in shapes],
        'strategies': {},
    }
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    def save(strategy: str, result: dict[str, Any]) -> None:
        document['strategies'][strategy] = result
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(document, indent=2) + '\n')

    try:
        for strategy in args.strategies:
            result = run_strategy(strategy, args.model, shapes, device, args.amp, args.backend,
                                  args.repeats, lambda partial: save(strategy, partial))
            save(strategy, result)
            print(f"{strategy}: {result['wall_s']:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)
    print(format_table(document))
    return document


if __name__ == '__main__':
    main()
