"""tools/shape_probe.py as a user runs it: two 1-epoch probes of the tiny config, the JSON, the
table and the advice, ``--resume`` keeping the finished probes and tests; config errors exit with
status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mmengine.config import Config

from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import run, write_tiny_multigrid_config


def test_probes_train_and_report(tmp_path: Path, synthetic_dataset: SyntheticDataset) -> None:
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset, validate=True)
    work = tmp_path / 'probe'
    proc = run([sys.executable, 'tools/shape_probe.py', str(config), '--epochs', '1', '--shapes', '4x24',
                '--work-dir', str(work)])
    result = json.loads((work / 'shape_probe.json').read_text())
    assert result['epochs'] == 1
    assert [(p['clip_len'], p['frame_interval'], p['crop_size'], p['base']) for p in result['probes']] == [
        (4, 4, 24, False), (8, 2, 32, True)]
    for probe in result['probes']:
        (point, ) = probe['validation_curve']
        assert point['epoch'] == 1 and 0 <= point['top1'] <= 1
    # the 4 x 24 probe's final weights validated at the base shape (8 x 32) by tools/test.py
    assert 0 <= result['probes'][0]['top1_at_base'] <= 1 and result['probes'][1]['top1_at_base'] is None
    at_base = (work / 'T4_I4_S24' / 'at_base.log').read_text()
    test_cfg = Config.fromfile(work / 'T4_I4_S24' / 'at_base.py')
    frames = next(t for t in test_cfg.test_dataloader.dataset.pipeline if t['type'] == 'SampleFrames')
    assert (frames['clip_len'], frames['frame_interval']) == (8, 2)
    assert 'Epoch(test) [' in at_base and 'acc/top1' in at_base
    # each probe trained the plain baseline at its shape: no multigrid in its log
    log = (work / 'T4_I4_S24' / 'train.log').read_text()
    assert 'MultigridHook' not in log and 'Epoch(train) [1][24/24]' in log
    table = proc.stdout.splitlines()[-4:]
    assert table[0].startswith('T x S (interval)') and table[1].startswith('4 x 24 (interval 4)')
    assert '; at the base shape ' in table[1]
    assert table[2].startswith('8 x 32 (interval 2) (base)')
    # the advice line; 4 x 24 is not one of the plan's long-cycle shapes, so no factor is dropped
    assert table[3] == result['advice']
    assert table[3].startswith('Every probed shape keeps at least 50%') or table[3].endswith(
        "none of them is in the plan's long_cycle_factors (what each grid saves: "
        'docs/choosing_the_grid.md).')
    probe, base_probe = result['probes']
    own = probe['validation_curve'][-1]['top1']
    assert probe['share_at_base'] == (probe['top1_at_base'] / own if own > 0 else None)
    assert base_probe['share_at_base'] is None

    # --resume keeps both finished probes and the finished test at the base shape; another seed is
    # another probe and trains and tests again
    tested = (work / 'T4_I4_S24' / 'at_base.log').stat().st_mtime_ns
    proc = run([sys.executable, 'tools/shape_probe.py', str(config), '--epochs', '1', '--shapes', '4x24',
                '--work-dir', str(work), '--resume'])
    assert proc.stdout.count(': kept, ') == 2 and proc.stdout.splitlines()[-4:] == table
    assert 'T4_I4_S24: its test at the base shape kept as well' in proc.stdout
    assert (work / 'T4_I4_S24' / 'at_base.log').stat().st_mtime_ns == tested
    assert json.loads((work / 'shape_probe.json').read_text()) == result
    proc = run([sys.executable, 'tools/shape_probe.py', str(config), '--epochs', '1', '--shapes', '4x24',
                '--work-dir', str(work), '--resume', '--seed', '1'])
    assert 'kept' not in proc.stdout and json.loads((work / 'shape_probe.json').read_text())['seed'] == 1
    assert (work / 'T4_I4_S24' / 'at_base.log').stat().st_mtime_ns > tested


def test_errors_exit_2(tmp_path: Path, synthetic_dataset: SyntheticDataset) -> None:
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset, validate=False)
    proc = run([sys.executable, 'tools/shape_probe.py', str(config), '--dry-run', '--work-dir',
                str(tmp_path / 'probe')], check=False)
    assert proc.returncode == 2 and 'error: shape probes validate at the probed shape' in proc.stderr
    proc = run([sys.executable, 'tools/shape_probe.py', str(config), '--shapes', '4by24',
                '--work-dir', str(tmp_path / 'probe')], check=False)
    assert proc.returncode == 2 and "error: --shapes takes TxS (frames x crop, e.g. 4x57), got '4by24'" \
        in proc.stderr
