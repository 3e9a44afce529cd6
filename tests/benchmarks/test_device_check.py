"""benchmarks/device_check.sh: its CPU dry run runs every step it can and returns 3 files; without a GPU,
or without the stack and its wheels, it stops early and says why."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from runs import REPO, run

SCRIPT = REPO / 'benchmarks' / 'device_check.sh'
HAS_MEASURE_STEPS = '--measure-steps' in (REPO / 'tools' / 'plan.py').read_text()


def test_dry_run_runs_every_step_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / 'out'
    run(['bash', str(SCRIPT), '--dry-run'], OUT=str(out), PYTHON=sys.executable)
    # a lent machine returns at most 8 files: these 3 (and the plot, after a GPU run)
    assert sorted(p.name for p in out.iterdir()) == ['device_check.log', 'device_check.tar.gz',
                                                     'summary.json']
    summary = json.loads((out / 'summary.json').read_text())
    status = {step['name']: step['status'] for step in summary['steps']}
    assert status == {'env': 'ok', 'stack_fixes': 'ok', 'shape_cost_fp32': 'ok',
                      'plan_synthetic': 'ok' if HAS_MEASURE_STEPS
                      else 'skipped: tools/plan.py has no --measure-steps',
                      'shape_cost_amp': 'skipped: --amp needs CUDA', 'preflight_fp32': 'ok',
                      'preflight_amp': 'skipped: --amp needs CUDA', 'speedup_arguments': 'ok',
                      'compile': 'ok'}
    assert summary['dry_run'] and summary['finished'] and summary['ok'] and not summary['failed']
    env = summary['env']
    assert env['executable'] == sys.executable and env['carried'] is None
    assert env['gpu']['cuda_available'] is False
    assert env['packages']['mmengine']['version'] == '0.10.7'
    assert env['packages']['mmaction2']['version'] == '1.2.0'
    assert env['stack_defects']['drn_missing_from_mmaction2'] is True
    steps = {step['name']: step for step in summary['steps']}
    assert steps['stack_fixes']['tests'].startswith('26 passed')
    log = (out / 'device_check.log').read_text()
    assert 'dry run: CPU, smallest sizes' in log and 'mmengine 0.10.7' in log

    with tarfile.open(out / 'device_check.tar.gz') as bundle:
        bundle.extractall(tmp_path, filter='data')
    results = tmp_path / 'results'
    assert set(summary['files']) == {p.name for p in results.iterdir()}
    shape_cost = json.loads((results / 'shape_cost_fp32.json').read_text())
    assert {name: len(m['shapes']) for name, m in shape_cost['models'].items()} == {'i3d': 8,
                                                                                 'slowfast': 8}
    preflight = json.loads((results / 'preflight_fp32.json').read_text())
    assert preflight['ok'] and set(preflight['models']) == {'i3d', 'slowfast'}
    compiled = json.loads((results / 'compile_cost.json').read_text())
    assert list(compiled['strategies']) == ['eager', 'static']
    static = compiled['strategies']['static']
    assert len(static['shapes']) == len(compiled['run_shapes']) == 8
    assert static['graphs'] == 8 and static['graph_breaks'] == 0 and not static['unimplemented']
    if HAS_MEASURE_STEPS:
        assert steps['plan_synthetic']['predicted']['speedup'] > 0
        assert json.loads((results / 'plan_synthetic.json').read_text())['step_times']['steps'] == 1


def test_steps_can_be_selected_for_a_second_try(tmp_path: Path) -> None:
    run(['bash', str(SCRIPT), '--dry-run'], OUT=str(tmp_path), PYTHON=sys.executable,
        DEVICE_CHECK_STEPS='speedup_arguments')
    summary = json.loads((tmp_path / 'summary.json').read_text())
    status = {step['name']: step['status'] for step in summary['steps']}
    assert status.pop('env') == status.pop('speedup_arguments') == 'ok'
    for name in ('stack_fixes', 'shape_cost_fp32', 'preflight_fp32', 'compile'):
        assert status.pop(name) == 'skipped: not in DEVICE_CHECK_STEPS'
    assert all(value.startswith('skipped: ') for value in status.values())
    assert summary['ok']


@pytest.mark.skipif(shutil.which('nvidia-smi') is not None, reason='this machine has nvidia-smi')
def test_without_a_gpu_it_stops_early_and_says_why(tmp_path: Path) -> None:
    proc = run(['bash', str(SCRIPT)], check=False, OUT=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('device_check: no NVIDIA GPU: nvidia-smi not found (use --dry-run '
                                   'to run the steps on CPU)')
    assert [p.name for p in tmp_path.iterdir()] == ['device_check.log']
    assert proc.stderr in (tmp_path / 'device_check.log').read_text()
    proc = run(['bash', str(SCRIPT), '--dry-run'], check=False, OUT='')
    assert proc.returncode == 2 and 'set OUT' in proc.stderr


def test_without_the_stack_or_its_wheels_it_stops_early_and_says_why(tmp_path: Path) -> None:
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(tmp_path / 'bare')], check=True)
    (tmp_path / 'no_wheels').mkdir()
    proc = run(['bash', str(SCRIPT), '--dry-run'], check=False, OUT=str(tmp_path / 'out'),
               PYTHON=str(tmp_path / 'bare' / 'bin' / 'python'), GPU_WHEELS=str(tmp_path / 'no_wheels'))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"device_check: {tmp_path}/bare/bin/python lacks the pinned stack (ModuleNotFoundError: No "
        f"module named 'torch') and {tmp_path}/no_wheels holds no wheels: set PYTHON, run 'make venv' "
        "(or pip install -r requirements.txt), or carry the wheel set of benchmarks/gpu_wheels.py")
