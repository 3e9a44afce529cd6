"""Train a recognizer: mmaction2 1.2.0's ``tools/train.py`` with the PyPI stack fixed (mmmultigrid).

Differences from upstream: ``import mmmultigrid`` first (stack fixes and components), ``--seed``,
``--diff-rank-seed`` and ``--deterministic`` also override a config's own ``randomness``, on a
machine without CUDA a distributed run uses gloo (``stack_fixes.prepare_cpu_distributed``), and ``--amp``
without a GPU stops with a message instead of mmengine's assertion.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmmultigrid import stack_fixes  # noqa: E402  (must precede anything built from mmaction)
from mmmultigrid.baseline import base_variable_hint  # noqa: E402

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.device import get_device  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train an action recognizer')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; given bare, resume from the latest checkpoint in the '
        'work directory')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by actual batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--diff-rank-seed', action='store_true',
                        help='set different seeds for different ranks')
    parser.add_argument('--deterministic', action='store_true',
                        help='set deterministic options for the CUDNN backend')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs merged into the config; lists as '
        'key="[a,b]" or key=a,b; no white space')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Merge CLI arguments into the config (``--cfg-options`` last, so it wins)."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    # work_dir priority: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        if get_device() == 'cpu':
            raise ValueError("--amp needs a GPU and none was found: mmengine's AmpOptimWrapper does not "
                             'run on CPU; train without --amp')
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp does not support optim_wrapper.type={optim_wrapper!r}; '
                             "use 'OptimWrapper' or 'AmpOptimWrapper'.")
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg:
            raise KeyError('--auto-scale-lr needs `auto_scale_lr=dict(base_batch_size=...)` '
                           f'in {args.config}.')
        cfg.auto_scale_lr.enable = True

    randomness = cfg.get('randomness', None) or dict(seed=None)
    if args.seed is not None:
        randomness['seed'] = args.seed
    if args.diff_rank_seed:
        randomness['diff_rank_seed'] = True
    if args.deterministic:
        randomness['deterministic'] = True
    cfg.randomness = randomness

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with stack_fixes.pkg_resources_hint(), base_variable_hint(args.config):
        cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)
    runner = stack_fixes.build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
