"""benchmarks/device_check.sh: its CPU dry run runs every step it can; without a GPU it stops early."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from runs import REPO, run

SCRIPT = REPO / 'benchmarks' / 'device_check.sh'


def test_dry_run_runs_every_step_on_cpu(tmp_path: Path) -> None:
    run(['bash', str(SCRIPT), '--dry-run'], OUT=str(tmp_path))
    with (tmp_path / 'summary.tsv').open() as f:
        status = {row['step']: row['status'] for row in csv.DictReader(f, delimiter='\t')}
    assert status == {'shape_cost_fp32': 'ok', 'shape_cost_amp': 'skipped: --amp needs CUDA',
                      'preflight_fp32': 'ok', 'preflight_amp': 'skipped: --amp needs CUDA',
                      'speedup_arguments': 'ok', 'compile': 'ok'}
    assert 'dry run' in (tmp_path / 'env.txt').read_text()
    shape_cost = json.loads((tmp_path / 'shape_cost_fp32.json').read_text())
    assert {name: len(m['shapes']) for name, m in shape_cost['models'].items()} == {'i3d': 8,
                                                                                 'slowfast': 8}
    preflight = json.loads((tmp_path / 'preflight_fp32.json').read_text())
    assert preflight['ok'] and set(preflight['models']) == {'i3d', 'slowfast'}
    compiled = json.loads((tmp_path / 'compile_cost.json').read_text())
    assert list(compiled['strategies']) == ['eager', 'static']
    static = compiled['strategies']['static']
    assert len(static['shapes']) == len(compiled['run_shapes']) == 8
    assert static['graphs'] == 8 and static['graph_breaks'] == 0 and not static['unimplemented']


@pytest.mark.skipif(shutil.which('nvidia-smi') is not None, reason='this machine has nvidia-smi')
def test_without_a_gpu_it_stops_early_and_says_why(tmp_path: Path) -> None:
    proc = run(['bash', str(SCRIPT)], check=False, OUT=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('device_check: no NVIDIA GPU: nvidia-smi not found (use --dry-run '
                                   'to run the steps on CPU)')
    assert not (tmp_path / 'summary.tsv').exists()
    proc = run(['bash', str(SCRIPT), '--dry-run'], check=False, OUT='')
    assert proc.returncode == 2 and 'set OUT' in proc.stderr
