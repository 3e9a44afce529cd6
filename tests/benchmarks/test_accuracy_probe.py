"""benchmarks/accuracy_probe.py: preset changes, the probe's config, and one tiny probe run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runs import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import accuracy_probe  # noqa: E402
import speedup  # noqa: E402

DATA = dict(video_dir=Path('/videos'), train_ann=Path('/train.txt'), val_ann=Path('/val.txt'),
            num_classes=5)


def test_apply_settings_changes_a_copy() -> None:
    preset = accuracy_probe.apply_settings(
        speedup.PRESETS['default'], ['schedule.lr=0.05', 'workers=0', 'dataset.seed=1'])
    assert preset['schedule']['lr'] == 0.05 and preset['workers'] == 0 and preset['dataset']['seed'] == 1
    assert speedup.PRESETS['default']['schedule']['lr'] != 0.05


@pytest.mark.parametrize('assignment, message', [
    ('schedule.lr', 'expected KEY=VALUE'),
    ('schedul.lr=1', "no section 'schedul'"),
    ('schedule.learning_rate=1', "no entry 'schedule.learning_rate'"),
])
def test_apply_settings_names_the_bad_assignment(assignment: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        accuracy_probe.apply_settings(speedup.PRESETS['default'], [assignment])


def _build_model(cfg):
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    return MODELS.build(cfg.model)


def test_pretrained_backbone_initialises_the_run(tmp_path: Path) -> None:
    preset = speedup.PRESETS['default']
    trained = _build_model(speedup.build_config('multigrid', preset, DATA))
    torch.save(dict(meta={}, state_dict=trained.state_dict()), tmp_path / 'epoch_12.pth')
    args = accuracy_probe.parse_args(['multigrid', '--pretrained', str(tmp_path / 'epoch_12.pth'),
                                      '--work-dir', str(tmp_path / 'probe')])
    model = _build_model(accuracy_probe.probe_config(args, preset, DATA))
    model.init_weights()
    for name, value in trained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name


def test_export_backbone_refuses_a_checkpoint_without_one(tmp_path: Path) -> None:
    torch.save(dict(state_dict={'cls_head.fc_cls.weight': torch.zeros(2, 2)}), tmp_path / 'c.pth')
    with pytest.raises(ValueError, match='no backbone'):
        accuracy_probe.export_backbone(tmp_path / 'c.pth', tmp_path / 'out.pth')


def test_grouped_bn_is_for_the_baseline_only() -> None:
    with pytest.raises(SystemExit):
        accuracy_probe.parse_args(['multigrid', '--grouped-bn', '8'])


def test_hook_options_reach_the_multigrid_hook(tmp_path: Path) -> None:
    args = accuracy_probe.parse_args(['multigrid', '--hook-option', 'short_cycle=false',
                                      'epoch_factor=2', '--work-dir', str(tmp_path)])
    cfg = accuracy_probe.probe_config(args, speedup.PRESETS['default'], DATA)
    hook = cfg.custom_hooks[0]
    assert hook.type == 'MultigridHook' and hook.short_cycle is False and hook.epoch_factor == 2
    with pytest.raises(SystemExit):
        accuracy_probe.parse_args(['baseline', '--hook-option', 'short_cycle=false'])


def test_tiny_probe_with_grouped_bn(tmp_path: Path) -> None:
    """End to end: the probe hook is imported by tools/train.py and groups BN of a batch of 4 in 2s."""
    work_dir = tmp_path / 'probe'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'benchmarks' / 'accuracy_probe.py'), 'baseline', '--preset', 'demo',
         '--grouped-bn', '2', '--val-interval', '1', '--work-dir', str(work_dir),
         '--synthetic-root', str(tmp_path / 'data'), '--set', 'dataset.num_classes=2',
         'dataset.train_clips_per_class=4', 'dataset.val_clips_per_class=2', 'dataset.num_frames=16',
         'dataset.width=64', 'dataset.height=48', 'model.base_channels=4', 'pipeline.clip_len=4',
         'pipeline.short_side=40', 'pipeline.crop_size=32', 'schedule.max_epochs=1',
         'schedule.milestones=[1]', 'schedule.batch_size=4', 'workers=0'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((work_dir / 'probe.json').read_text())
    assert result['iterations'] == 2 and len(result['validation_curve']) == 1
    assert result['grouped_bn'] == 2 and 'epoch 1:' in proc.stdout
    assert 'BatchNorm3d layers normalise groups of 2 clips' in (work_dir / 'train.log').read_text()
