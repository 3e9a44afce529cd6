"""latest_scalars and latest_test_metrics: the newest run's logged rows or test metrics, and a clear
error when there is none."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmmultigrid.engine.run_scalars import latest_scalars, latest_test_metrics


def write_run(work_dir: Path, stamp: str, rows: list[dict], mtime: float) -> None:
    path = work_dir / stamp / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    os.utime(path, (mtime, mtime))


def test_latest_run_by_modification_time(tmp_path: Path) -> None:
    newer = [dict(loss=1.5, step=1), {'acc/top1': 0.5, 'step': 1}]
    write_run(tmp_path, '20261202_120000', newer, mtime=2_000_000)
    # a resumed or restarted run can sort first by name; the latest written one counts
    write_run(tmp_path, '20261202_130000', [dict(loss=9.0, step=1)], mtime=1_000_000)
    assert latest_scalars(tmp_path) == newer


def test_no_run(tmp_path: Path) -> None:
    (tmp_path / '20261202_120000').mkdir()
    with pytest.raises(FileNotFoundError, match=f'no \\*/vis_data/scalars.json under {tmp_path}'):
        latest_scalars(tmp_path)


def test_latest_test_metrics(tmp_path: Path) -> None:
    """The metrics tools/test.py's LoggerHook wrote to <timestamp>/<timestamp>.json."""
    (tmp_path / '20261202_000000').mkdir()
    (tmp_path / '20261202_000000' / '20261202_000000.json').write_text(json.dumps({'acc/top1': 0.4}))
    assert latest_test_metrics(tmp_path)['acc/top1'] == 0.4
    with pytest.raises(FileNotFoundError, match='the test did not run'):
        latest_test_metrics(tmp_path / 'missing')
