"""benchmarks/budget_sweep.py: the runs it plans, the targets it checks, and a tiny 2-length sweep."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmmultigrid.baseline import plan_from_config
from runs import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import budget_sweep  # noqa: E402
import speedup  # noqa: E402

DATA = dict(video_dir=Path('/videos'), train_ann=Path('/train.txt'), val_ann=Path('/val.txt'),
            num_classes=5)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def test_lengths_scale_epochs_milestones_and_warmup() -> None:
    schedule = dict(max_epochs=6, milestones=[4, 5], warmup_epochs=1, lr=0.02, batch_size=8)
    assert budget_sweep.scaled_schedule(schedule, 1) == schedule
    assert budget_sweep.scaled_schedule(schedule, 2) == dict(schedule, max_epochs=12,
                                                             milestones=[8, 10], warmup_epochs=2)
    assert budget_sweep.scaled_schedule(schedule, 4) == dict(schedule, max_epochs=24,
                                                             milestones=[16, 20], warmup_epochs=4)
    # milestones stay distinct and inside the run when a length shrinks the schedule
    assert budget_sweep.scaled_schedule(schedule, 0.25)['milestones'] == [1]


def test_every_length_has_both_methods_on_the_same_data_and_seed() -> None:
    args = budget_sweep.parse_args(['--lengths', '2', '1', '4', '--extra-seeds', '7'])
    runs = budget_sweep.planned_runs(args, speedup.PRESETS['default'])
    keys = [(r['method'], r['schedule'], r['seed']) for r in runs]
    assert keys == [(m, length, seed) for length, seeds in ((1, [0]), (2, [0]), (4, [0, 7]))
                    for seed in seeds for m in ('baseline', 'multigrid')]
    for r in runs:
        assert r['preset']['dataset'] == speedup.PRESETS['default']['dataset']
        assert r['preset']['schedule']['max_epochs'] == 6 * r['schedule']
    for baseline, multigrid in zip(runs[::2], runs[1::2]):
        b_cfg, b_epochs = budget_sweep.run_config('baseline', baseline['preset'], DATA,
                                                  baseline['seed'], 3)
        m_cfg, m_epochs = budget_sweep.run_config('multigrid', multigrid['preset'], DATA,
                                                  multigrid['seed'], 3)
        assert b_cfg.randomness.seed == m_cfg.randomness.seed == baseline['seed']
        assert b_cfg.train_dataloader.dataset.ann_file == m_cfg.train_dataloader.dataset.ann_file
        assert b_cfg.param_scheduler == m_cfg.param_scheduler
        assert b_epochs == baseline['preset']['schedule']['max_epochs']
        assert m_epochs == plan_from_config(m_cfg, 1).max_epochs > b_epochs


def test_bad_lengths_are_refused() -> None:
    for lengths in (['1', '1'], ['0', '2']):
        with pytest.raises(SystemExit):
            budget_sweep.parse_args(['--lengths', *lengths])


def _run(method: str, length: float, seed: int, wall_clock: float, top1: float) -> dict:
    return dict(method=method, schedule=length, seed=seed, wall_clock_s=wall_clock, top1=top1)


def test_targets() -> None:
    runs = [_run('baseline', 1, 0, 300, 0.70), _run('multigrid', 1, 0, 100, 0.72),
            _run('baseline', 2, 0, 600, 0.85), _run('multigrid', 2, 0, 200, 0.84),
            _run('baseline', 4, 0, 1200, 0.90), _run('multigrid', 4, 0, 400, 0.895),
            _run('baseline', 4, 1, 1200, 0.91), _run('multigrid', 4, 1, 450, 0.905)]
    targets = budget_sweep.check_targets(runs)
    assert targets['parity']['met'] and len(targets['parity']['runs']) == 2
    assert not targets['speedup']['met']  # 1200 / 450 = 2.67x < 2.8x
    assert [s['speedup'] for s in targets['speedup']['runs'] if s['seed'] == 0] == [3.0, 3.0, 3.0]
    # every baseline point lies past the multigrid curve's last point (0.895): 0.90 is within 1 point
    assert targets['curve']['met']
    worse = [dict(r, top1=0.80) if (r['method'], r['schedule'], r['seed']) == ('multigrid', 4, 1)
             else r for r in runs]
    assert not budget_sweep.check_targets(worse)['parity']['met']
    ahead = [dict(r, top1=0.95) if (r['method'], r['schedule'], r['seed']) == ('baseline', 2, 0)
             else r for r in runs]
    curve = budget_sweep.check_targets(ahead)['curve']
    assert not curve['met']
    assert [p['schedule'] for p in curve['points'] if p['above'] > 0.01] == [2]


def tiny_sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """budget_sweep.py on a 2-class, 16-clip set with a 2-channel model, no extra seed; its output
    and JSON."""
    out = tmp_path / 'sweep.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'benchmarks' / 'budget_sweep.py'), '--preset', 'demo',
         '--extra-seeds', '--work-dir', str(tmp_path / 'work'), '--out', str(out),
         '--synthetic-root', str(tmp_path / 'data'), *args,
         '--set', 'dataset.num_classes=2', 'dataset.train_clips_per_class=8',
         'dataset.val_clips_per_class=2', 'dataset.num_frames=16', 'dataset.width=64',
         'dataset.height=48', 'model.base_channels=2', 'pipeline.clip_len=8',
         'pipeline.short_side=40', 'pipeline.crop_size=32', 'schedule.max_epochs=2',
         'schedule.milestones=[1]', 'schedule.batch_size=1', 'workers=0'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_tiny_two_length_sweep(tmp_path: Path) -> None:
    """End to end: 2 lengths x 2 methods through tools/train.py, JSON and plot."""
    out = tmp_path / 'sweep.json'
    proc, result = tiny_sweep(tmp_path, '--lengths', '1', '2', '--validations', '2')
    runs = result['runs']
    assert [(r['method'], r['schedule'], r['max_epochs']) for r in runs] == [
        ('baseline', 1, 2), ('multigrid', 1, 3), ('baseline', 2, 4), ('multigrid', 2, 6)]
    for r in runs:
        assert set(r) >= {'method', 'schedule', 'max_epochs', 'wall_clock_s', 'iterations', 'top1',
                          'validation_curve'}
        assert r['validation_curve'][-1]['epoch'] == r['max_epochs']
        assert r['validation_curve'][-1]['top1'] == r['top1']
        assert 0 < r['wall_clock_s'] and r['iterations'] > 0
    assert runs[0]['iterations'] == 2 * 16  # 16 clips of batch 1, 2 epochs
    assert set(result['targets']) == {'parity', 'speedup', 'curve'}
    assert out.with_suffix('.png').read_bytes().startswith(PNG_SIGNATURE)
    assert 'target parity:' in proc.stdout


def test_rawframes_sweep(tmp_path: Path) -> None:
    """--format rawframes: the frames are extracted once (with the copies of the plan) and both
    methods train from them through tools/train.py."""
    _, result = tiny_sweep(tmp_path, '--lengths', '1', '--validations', '1', '--format', 'rawframes')
    assert result['format'] == 'rawframes'
    assert [(r['method'], r['iterations'] > 0) for r in result['runs']] == [
        ('baseline', True), ('multigrid', True)]
    frames = tmp_path / 'data' / 'videos-rawframes'
    assert (frames / 'train_list.txt').read_text().splitlines()[0] == 'train/train_00000 16 0'
    assert sorted(p.name for p in (frames / 'train' / 'train_00000').iterdir() if p.is_dir()) == [
        'short20', 'short29']
    config = (tmp_path / 'work').rglob('multigrid.py')
    assert "type='ScaledRawFrameDecode'" in next(config).read_text()
