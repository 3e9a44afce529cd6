"""benchmarks/budget_sweep.py: the runs it plans, the targets it checks, and a tiny 2-length sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    # the extra seed repeats the two longest lengths
    assert keys == [(m, length, seed) for length, seeds in ((1, [0]), (2, [0, 7]), (4, [0, 7]))
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


def test_a_variant_is_multigrid_with_its_hook_options() -> None:
    factors = [[0.5, 0.7071], [0.5, 1], [1, 1]]
    args = budget_sweep.parse_args(['--lengths', '1', '--extra-seeds', '--methods', 'multigrid',
                                    '--hook-option', f'long_cycle_factors={json.dumps(factors)}'])
    (run, ) = budget_sweep.planned_runs(args, speedup.PRESETS['default'])
    assert run['variant'] == 'multigrid {"long_cycle_factors":[[0.5,0.7071],[0.5,1],[1,1]]}'
    assert budget_sweep.run_name(run) == 'multigrid_x1_seed0_long_cycle_factors-0.5-0.7071-0.5-1-1-1'
    other = dict(run, hook_options=dict(long_cycle_factors=[[0.5, 0.5], [0.5, 0.7071], [1, 1]]))
    assert budget_sweep.run_name(other) != budget_sweep.run_name(run)  # one folder per variant
    cfg, _ = budget_sweep.run_config('multigrid', run['preset'], DATA, 0, 3, run['hook_options'])
    plan = plan_from_config(cfg, 1)
    assert min(s.long_shape.clip_len for s in plan.segments) == 8  # no T/4 shape
    with pytest.raises(SystemExit):
        budget_sweep.parse_args(['--methods', 'baseline', '--hook-option', 'short_cycle=false'])


def test_bad_lengths_are_refused() -> None:
    for lengths in (['1', '1'], ['0', '2']):
        with pytest.raises(SystemExit):
            budget_sweep.parse_args(['--lengths', *lengths])


def _run(variant: str, length: float, seed: int, curve: list[tuple[float, float]]) -> dict:
    """A run whose validation curve has (modeled time, top-1) points, one per 2 epochs."""
    points = [dict(epoch=2 * (i + 1), wall_clock_s=2 * t, modeled_time_s=t, top1=top1)
              for i, (t, top1) in enumerate(curve)]
    return dict(method=variant.split()[0], variant=variant, schedule=length, seed=seed,
                max_epochs=2 * len(curve), validation_curve=points, top1=points[-1]['top1'],
                modeled_time_s=curve[-1][0], wall_clock_s=2 * curve[-1][0])


SWEEP = [_run('baseline', 2, 0, [(100, 0.5), (200, 0.90)]),
         _run('multigrid', 2, 0, [(30, 0.2), (70, 0.80)]),
         _run('baseline', 4, 0, [(200, 0.6), (400, 0.97)]),
         _run('multigrid', 4, 0, [(60, 0.3), (140, 0.965)]),
         _run('baseline', 4, 1, [(200, 0.6), (400, 0.95)]),
         _run('multigrid', 4, 1, [(60, 0.3), (150, 0.955)])]


def test_time_to_accuracy_takes_the_soonest_run_per_seed() -> None:
    tta = budget_sweep.time_to_accuracy(SWEEP, 0.90)
    assert tta['basis'] == 'modeled_time_s'
    conv = tta['converged_baseline']
    assert conv['length'] == 4 and conv['top1'] == pytest.approx(0.96)
    assert conv['previous_length'] == 2 and conv['gain'] == pytest.approx(0.06)
    main = tta['targets']['converged_baseline_minus_1']
    assert main['top1'] == pytest.approx(0.95)
    assert main['reached']['baseline'] == {
        '0': dict(time_s=400, epoch=4, max_epochs=4, top1=0.97, schedule=4),
        '1': dict(time_s=400, epoch=4, max_epochs=4, top1=0.95, schedule=4)}
    assert main['reached']['multigrid']['0']['time_s'] == 140
    assert main['ratio']['multigrid'] == {'0': pytest.approx(400 / 140), '1': pytest.approx(400 / 150)}
    fixed = tta['targets']['top1_0.9']
    # the 2x baseline reaches 90% first (200), the 4x multigrid before the 2x one, which never does
    assert fixed['reached']['baseline']['0']['schedule'] == 2
    assert fixed['reached']['multigrid']['0'] == dict(time_s=140, epoch=4, max_epochs=4, top1=0.965,
                                                      schedule=4)
    # wall-clock is the basis when a run has no modeled time
    unmodeled = [dict(r, modeled_time_s=None) if i == 0 else r for i, r in enumerate(SWEEP)]
    assert budget_sweep.time_to_accuracy(unmodeled, 0.9)['basis'] == 'wall_clock_s'


def test_targets_of_issue_18() -> None:
    targets = budget_sweep.check_targets(SWEEP, budget_sweep.time_to_accuracy(SWEEP, 0.90))
    assert not targets['converged']['met']  # the last doubling gained 6 points
    assert targets['multigrid']['parity']['met']  # 0.96 against 0.96
    assert targets['multigrid']['time_to_accuracy']['met']  # 2.86x and 2.67x
    slow = [dict(r, validation_curve=[dict(p, modeled_time_s=180) for p in r['validation_curve']])
            if (r['variant'], r['seed']) == ('multigrid', 1) else r for r in SWEEP]
    targets = budget_sweep.check_targets(slow, budget_sweep.time_to_accuracy(slow, 0.90))
    assert targets['multigrid']['time_to_accuracy']['ratio']['1'] == pytest.approx(400 / 180)
    assert not targets['multigrid']['time_to_accuracy']['met']


def test_table_columns_fit_the_longest_variant() -> None:
    grid = 'multigrid {"long_cycle_factors":[[0.5,0.7071],[0.5,1],[1,1]]}'
    runs = [dict(r, iterations=100) for r in SWEEP + [_run(grid, 4, 0, [(90, 0.5)])]]
    tta = budget_sweep.time_to_accuracy(runs, 0.90)
    lines = budget_sweep.table(runs, tta, budget_sweep.check_targets(runs, tta)).splitlines()
    rows = lines[:len(runs) + 1]
    assert rows[-1].startswith(grid + ' ') and rows[0].startswith('variant ')
    assert len({len(row) for row in rows}) == 1  # every column ends at the same place
    assert len({row.index('x ') for row in rows[1:]}) == 1  # the length column (4x, 2x) lines up
    # where a run reached the target: its time, length and epoch of its schedule
    assert '  baseline: seed 0: 400s (4x, epoch 4 of 4), seed 1: 400s (4x, epoch 4 of 4)' in lines


def test_modeled_time_is_iterations_times_calibrated_seconds() -> None:
    run = dict(epoch_iterations_per_shape={'1': {'8x4x40': 3, '4x8x57': 2}, '2': {'base': 4}},
               validation_curve=[dict(epoch=1, top1=0.1), dict(epoch=2, top1=0.2)])
    calibration = dict(seconds={'8x4x40': 1.0, '4x8x57': 0.5, '4x16x80': 2.0})
    budget_sweep.add_modeled_time(run, calibration, '4x16x80')
    assert run['modeled_time_s'] == 3 + 1 + 8
    assert [p['modeled_time_s'] for p in run['validation_curve']] == [4, 12]
    budget_sweep.add_modeled_time(run, dict(seconds={'8x4x40': 1.0}), '4x16x80')
    assert run['modeled_time_s'] is None and run['validation_curve'][0]['modeled_time_s'] is None


def test_modeled_time_counts_precise_bn_before_each_validation() -> None:
    run = dict(epoch_iterations_per_shape={'1': {'8x4x40': 3}, '2': {'base': 4}},
               validation_curve=[dict(epoch=1, top1=0.1, precise_bn_batches=5),
                                 dict(epoch=2, top1=0.2, precise_bn_batches=5)])
    calibration = dict(seconds={'8x4x40': 1.0, '4x16x80': 2.0}, precise_bn_seconds={'4x16x80': 0.5})
    budget_sweep.add_modeled_time(run, calibration, '4x16x80')
    assert [p['modeled_time_s'] for p in run['validation_curve']] == [3 + 2.5, 3 + 8 + 5]
    assert run['modeled_time_s'] == 3 + 8 + 5
    # a calibration made before precise BN was timed cannot model the run
    budget_sweep.add_modeled_time(run, dict(seconds=calibration['seconds']), '4x16x80')
    assert run['modeled_time_s'] is None and run['validation_curve'][1]['modeled_time_s'] is None


TINY = ['--set', 'dataset.num_classes=2', 'dataset.train_clips_per_class=8',
        'dataset.val_clips_per_class=2', 'dataset.num_frames=16', 'dataset.width=64',
        'dataset.height=48', 'model.base_channels=2', 'pipeline.clip_len=8',
        'pipeline.short_side=40', 'pipeline.crop_size=32', 'schedule.max_epochs=2',
        'schedule.milestones=[1]', 'schedule.batch_size=1', 'workers=0']


def sweep_command(tmp_path: Path, *args: str) -> list[str]:
    """budget_sweep.py on a 2-class, 16-clip set with a 2-channel model, no extra seed."""
    return [sys.executable, str(REPO / 'benchmarks' / 'budget_sweep.py'), '--preset', 'demo',
            '--extra-seeds', '--work-dir', str(tmp_path / 'work'), '--out', str(tmp_path / 'sweep.json'),
            '--synthetic-root', str(tmp_path / 'data'), *args, *TINY]


def tiny_sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The tiny sweep run to its end: its output and JSON."""
    proc = subprocess.run(sweep_command(tmp_path, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((tmp_path / 'sweep.json').read_text())


def test_tiny_sweep_calibrates_and_resumes(tmp_path: Path) -> None:
    """End to end: a calibrated 1x sweep, then --resume with 1x and 2x trains only the 2x pair (both at
    once: --jobs 2); every run and validation point has its modeled time; JSON and plot."""
    out = tmp_path / 'sweep.json'
    _, first = tiny_sweep(tmp_path, '--lengths', '1', '--validations', '2', '--calibrate',
                          '--calibrate-steps', '1')
    seconds = first['calibration']['seconds']
    assert list(seconds)[0] == '1x8x32' and len(seconds) == 8 and all(v > 0 for v in seconds.values())
    assert first['calibration']['machine']['cpus'] >= 1
    assert list(first['calibration']['precise_bn_seconds']) == ['1x8x32']
    proc, result = tiny_sweep(tmp_path, '--lengths', '1', '2', '--validations', '2', '--resume',
                              '--jobs', '2')
    assert '2 runs kept' in proc.stdout and 'training baseline_x1' not in proc.stdout
    runs = result['runs']
    assert runs[:2] == first['runs']
    assert [(r['method'], r['schedule'], r['max_epochs'], r['concurrent_runs']) for r in runs] == [
        ('baseline', 1, 2, 1), ('multigrid', 1, 3, 1), ('baseline', 2, 4, 2), ('multigrid', 2, 6, 2)]
    for r in runs:
        assert r['validation_curve'][-1]['epoch'] == r['max_epochs']
        assert r['validation_curve'][-1]['top1'] == r['top1']
        assert 0 < r['modeled_time_s'] == r['validation_curve'][-1]['modeled_time_s']
        assert r['wall_clock_s'] > 0 and r['iterations'] == sum(
            n for counts in r['epoch_iterations_per_shape'].values() for n in counts.values())
    assert runs[0]['iterations'] == 2 * 16  # 16 clips of batch 1, 2 epochs
    assert runs[0]['modeled_time_s'] == pytest.approx(32 * seconds['1x8x32'])
    assert result['time_to_accuracy']['basis'] == 'modeled_time_s'
    assert len(result['commands']) == 2
    assert out.with_suffix('.png').read_bytes().startswith(PNG_SIGNATURE)
    assert 'target converged:' in proc.stdout
    proc, again = tiny_sweep(tmp_path, '--lengths', '1', '2', '--validations', '2', '--resume')
    assert '4 runs kept' in proc.stdout and again['runs'] == runs
    assert again['commands'] == result['commands']  # a resume that trains nothing is not recorded
    other = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'budget_sweep.py'), '--preset',
                            'demo', '--out', str(out), '--resume', '--dry-run',
                            '--synthetic-root', str(tmp_path / 'data')], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and 'made with other settings' in other.stderr


def test_a_run_killed_part_way_continues_from_its_checkpoint(tmp_path: Path) -> None:
    """The sweep (and its training process) SIGKILLed after the run's first epoch checkpoint; --resume
    continues that run from it, and its entry counts every epoch's iterations once."""
    args = ('--lengths', '4', '--methods', 'baseline', '--validations', '2')
    sweep = subprocess.Popen(sweep_command(tmp_path, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = tmp_path / 'work' / 'baseline_x4_seed0' / 'last_checkpoint'
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None and not checkpoint.exists():
        time.sleep(0.05)
    assert sweep.poll() is None, 'the sweep ended before it could be killed'
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert json.loads((tmp_path / 'sweep.json').read_text())['runs'] == []
    proc, result = tiny_sweep(tmp_path, *args, '--resume')
    assert 'baseline_x4_seed0: resuming from' in proc.stdout
    run, = result['runs']
    assert 1 <= run['resumed_after_epochs'][0] < run['max_epochs'] == 8
    assert run['epoch_iterations_per_shape'] == {str(e): {'base': 16} for e in range(1, 9)}
    assert [p['epoch'] for p in run['validation_curve']] == [4, 8]


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


def test_base_key_is_the_plans_base_shape() -> None:
    """The baseline's iterations ('base') are timed at the plan's base shape: for the 2D preset its T is
    the segment count (SampleFrames.num_clips), not clip_len 1."""
    assert budget_sweep.base_key(speedup.PRESETS['default'], DATA) == '4x16x80'
    assert budget_sweep.base_key(speedup.PRESETS['tsm'], DATA) == '4x8x48'


def test_resume_accepts_its_own_file_with_tuples(tmp_path: Path) -> None:
    """A preset holding tuples (the tsm preset's strides) matches the JSON it wrote (lists there)."""
    out = tmp_path / 'sweep.json'
    preset = speedup.PRESETS['tsm']
    out.write_text(json.dumps(dict(settings=preset, format='video', runs=[])))
    args = budget_sweep.parse_args(['--preset', 'tsm', '--resume', '--out', str(out)])
    assert budget_sweep.load_previous(args, preset)['runs'] == []
