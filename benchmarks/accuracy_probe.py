"""Accuracy probe: one run of a ``speedup.py`` preset with some settings changed, validated as it goes.

This is how the accuracy gap of the speed-up benchmark was investigated (RESULTS.md, "Where the accuracy
goes"). It measures accuracy only, so two probes may share the machine. Examples::

    # multigrid with a higher base learning rate
    python benchmarks/accuracy_probe.py multigrid --set schedule.lr=0.05
    # the first long-cycle shape alone, plain BN over the batch of 64 (then with --grouped-bn 8)
    python benchmarks/accuracy_probe.py baseline --set schedule.batch_size=64 schedule.lr=0.16 \\
        pipeline.clip_len=4 pipeline.frame_interval=8 pipeline.crop_size=91 schedule.max_epochs=6
    # fine-tuning: the backbone of a finished run initialises this one
    python benchmarks/accuracy_probe.py multigrid --pretrained work_dirs/speedup/baseline/epoch_12.pth \\
        --set dataset.num_classes=16 dataset.train_clips_per_class=64 dataset.val_clips_per_class=32 \\
        dataset.seed=1

``--set SECTION.KEY=VALUE`` changes one entry of the preset (VALUE is JSON, else a string). The
synthetic dataset is generated under ``data/probe-<hash of its parameters>`` unless unchanged.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import speedup  # noqa: E402  (puts the repository on sys.path and repairs the OpenMMLab stack)
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmaction.registry import HOOKS  # noqa: E402

from mmmultigrid.models.batchnorm import use_grouped_batchnorm  # noqa: E402


@HOOKS.register_module()
class GroupedBatchNormProbeHook(Hook):
    """Normalise a fixed-shape run's batch in groups of ``group_size`` clips, as ``MultigridHook``
    does, to tell the effect of grouped BN from that of the schedule."""

    priority = 'HIGHEST'

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        count = use_grouped_batchnorm(model, self.group_size)
        runner.logger.info(f'probe: {count} BatchNorm3d layers normalise groups of '
                           f'{self.group_size} clips')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run', choices=sorted(speedup.CONFIGS))
    parser.add_argument('--preset', choices=sorted(speedup.PRESETS), default='default')
    parser.add_argument('--set', nargs='+', default=[], metavar='SECTION.KEY=VALUE',
                        help='change preset entries, e.g. schedule.lr=0.05 workers=0')
    parser.add_argument('--pretrained', type=Path,
                        help='mmengine checkpoint whose backbone.* weights initialise the run')
    parser.add_argument('--grouped-bn', type=int, metavar='N',
                        help='baseline only: batch norm in groups of N clips')
    parser.add_argument('--hook-option', nargs='+', default=[], metavar='KEY=VALUE',
                        help='multigrid only: MultigridHook arguments (VALUE is JSON), '
                        'e.g. short_cycle=false')
    parser.add_argument('--val-interval', type=int, default=2, help='epochs between validations')
    parser.add_argument('--work-dir', type=Path, default=speedup.REPO / 'work_dirs' / 'probe')
    parser.add_argument('--synthetic-root', type=Path,
                        help='where the synthetic dataset is generated (default: under data/)')
    args = parser.parse_args(argv)
    if args.grouped_bn is not None and args.run != 'baseline':
        parser.error('--grouped-bn is for the baseline run (multigrid groups its BN itself)')
    if args.hook_option and args.run != 'multigrid':
        parser.error('--hook-option is for the multigrid run')
    args.hook_option = dict(parse_assignment(a) for a in args.hook_option)
    return args


def parse_assignment(assignment: str) -> tuple[str, Any]:
    key, sep, raw = assignment.partition('=')
    if not sep or not key:
        raise SystemExit(f'{assignment!r}: expected KEY=VALUE')
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def apply_settings(preset: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of `preset` with each ``SECTION.KEY=VALUE`` (or ``KEY=VALUE``) applied."""
    preset = copy.deepcopy(preset)
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        *sections, name = key.split('.')
        target = preset
        for section in sections:
            if not isinstance(target.get(section), dict):
                raise SystemExit(f'--set {assignment!r}: the preset has no section {section!r}')
            target = target[section]
        if name not in target:
            raise SystemExit(f'--set {assignment!r}: the preset has no entry {key!r} '
                             f'(entries: {", ".join(sorted(target))})')
        target[name] = value
    return preset


def export_backbone(checkpoint: Path, out: Path) -> None:
    """Save the ``backbone.*`` weights of an mmengine checkpoint as the plain state dict that
    ``ResNet3d(pretrained=...)`` loads."""
    import torch
    state = torch.load(checkpoint, map_location='cpu')['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if not backbone:
        raise ValueError(f'{checkpoint} has no backbone.* weights')
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(backbone, out)


def probe_config(args: argparse.Namespace, preset: dict[str, Any], data: dict[str, Any]):
    cfg = speedup.build_config(args.run, preset, data)
    cfg.train_cfg.update(val_interval=args.val_interval, val_begin=1)
    if args.pretrained is not None:
        weights = args.work_dir / 'pretrained_backbone.pth'
        export_backbone(args.pretrained, weights)
        cfg.model.backbone.pretrained = str(weights)
    if args.hook_option:
        cfg.custom_hooks[0].update(args.hook_option)
    if args.grouped_bn is not None:
        cfg.custom_imports = dict(imports=['mmmultigrid', 'accuracy_probe'], allow_failed_imports=False)
        cfg.custom_hooks = [dict(type='GroupedBatchNormProbeHook', group_size=args.grouped_bn)]
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = apply_settings(speedup.PRESETS[args.preset], args.set)
    root = args.synthetic_root or speedup.REPO / 'data' / (
        f'synthetic-{args.preset}' if preset['dataset'] == speedup.PRESETS[args.preset]['dataset']
        else 'probe-' + hashlib.sha1(json.dumps(preset['dataset'], sort_keys=True).encode()).hexdigest()[:10])
    data = speedup.dataset_paths(
        speedup.parse_args(['--preset', args.preset, '--synthetic-root', str(root)]), preset)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = probe_config(args, preset, data)
    os.environ['PYTHONPATH'] = os.pathsep.join(
        [str(BENCHMARKS)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
    result = speedup.train(args.run, cfg, args.work_dir, preset['threads'])
    result.update(run=args.run, preset=args.preset, settings=preset, set=args.set,
                  pretrained=None if args.pretrained is None else str(args.pretrained),
                  grouped_bn=args.grouped_bn, hook_options=args.hook_option)
    (args.work_dir / 'probe.json').write_text(json.dumps(result, indent=2) + '\n')
    print(' '.join(f"epoch {p['epoch']}: {100 * p['top1']:.1f}%" for p in result['validation_curve']))
    return result


if __name__ == '__main__':
    main()
