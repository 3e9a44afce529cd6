"""Running the tools as a user would: subprocesses with a clean environment (or, where a test must patch
or observe the process, the same Runner in-process), tiny configs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mmengine.config import Config

from mmmultigrid import stack_fixes
from mmmultigrid.data.synthetic_videos import SyntheticDataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without variables that would change torch.load or the launcher."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith('TORCH_FORCE_') and key not in
           ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', **extra)
    return env


def run(args: list[str], check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``args`` in the repo root; with ``check``, fail the test with its output on error."""
    proc = subprocess.run(args, cwd=REPO, env=clean_env(**env), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    return proc


def train(config: Path, work_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, 'tools/train.py', str(config), '--work-dir', str(work_dir), *args],
               check=check)


def build_runner_in_process(config: Path, work_dir: Path, options: dict[str, Any]) -> Any:
    """The Runner that ``tools/train.py config --cfg-options options`` builds, in this process.

    For tests that patch mmengine or read torch's process-wide state (dynamo counters) during training.
    """
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(options)
    cfg.work_dir = str(work_dir)
    cfg.launcher = 'none'
    return stack_fixes.build_runner(cfg)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def write_tiny_multigrid_config(path: Path, ds: SyntheticDataset, max_epochs: int = 4,
                                milestones: tuple[int, ...] = (2, 3), validate: bool = False,
                                hook: str = 'trace=True', extra: str = '') -> Path:
    """A CPU-sized multigrid config on ``ds``: batch 1, T=8, 32 px, slim R3D-18.

    Its plan visits every long-cycle shape and every short-cycle crop (4 baseline epochs, 6 stretched).
    """
    val = (f"""
val_dataloader = dict(batch_size=4, num_workers=1,
                      dataset=dict(ann_file='{ds.val_ann}', data_prefix=dict(video='{ds.video_dir}'),
                                   pipeline=val_pipeline))
""" if validate else """
val_dataloader = None
val_cfg = None
val_evaluator = None
""")
    path.write_text(f"""
_base_ = ['{REPO}/configs/synthetic_r3d_multigrid.py']
model = dict(backbone=dict(base_channels=8), cls_head=dict(num_classes={ds.num_classes}, in_channels=64))
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop', area_range=(0.5, 1.0)),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
train_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    dataset=dict(ann_file='{ds.train_ann}', data_prefix=dict(video='{ds.video_dir}'),
                 pipeline=[dict(type='ShapeVaryingPipeline', transforms=train_pipeline)]))
{val}
train_cfg = dict(max_epochs={max_epochs}, val_interval=1)
param_scheduler = [dict(type='MultiStepLR', begin=0, end={max_epochs}, by_epoch=True,
                        milestones={list(milestones)}, gamma=0.1)]
custom_hooks = [dict(type='MultigridHook', {hook})]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=10,
                                                             save_best=None))
{extra}
""")
    return path


def tiny_2d_model(backbone: str = 'ResNetTSM', head: str = 'TSMHead', num_segments: int = 4,
                  head_segments: int | None = None, num_classes: int = 4) -> dict[str, Any]:
    """A Recognizer2D config: ResNet-18 (``ResNet`` for TSN, ``ResNetTSM``/``ResNetTIN``) with a
    ``TSMHead``/``TSNHead``/``TRNHead``; ``num_segments`` for the backbone and the head (unless
    ``head_segments``), no pretrained weights."""
    backbone_cfg = dict(type=backbone, depth=18, pretrained=None, norm_eval=False)
    if backbone != 'ResNet':
        backbone_cfg.update(num_segments=num_segments, pretrained2d=False)
    head_cfg = dict(type=head, num_classes=num_classes, in_channels=512, dropout_ratio=0.0)
    if head != 'TSNHead':
        head_cfg.update(num_segments=head_segments or num_segments)
    return dict(type='Recognizer2D', backbone=backbone_cfg, cls_head=head_cfg,
                data_preprocessor=dict(type='ActionDataPreprocessor', mean=[128.0] * 3,
                                       std=[64.0] * 3, format_shape='NCHW'))
