"""latest_scalars, resumed_scalars and latest_test_metrics: the newest run's logged rows, those of a
run resumed in another process, or test metrics, and a clear error when there is none."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmmultigrid.engine.run_scalars import latest_scalars, latest_test_metrics, resumed_scalars


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


def test_resumed_scalars_count_the_cut_off_epoch_once(tmp_path: Path) -> None:
    """A run killed in epoch 3 after its epoch-2 checkpoint and resumed: the first process's rows of
    epoch 3 (cut off) are dropped, the second's kept; a process that logged nothing counts for nothing."""
    first = [dict(loss=1.0, epoch=1, step=1), {'acc/top1': 0.1, 'step': 1},
             dict(loss=1.0, epoch=2, step=2), {'acc/top1': 0.2, 'step': 2},
             dict(loss=9.0, epoch=3, step=3)]
    second = [dict(loss=1.0, epoch=3, step=3), {'acc/top1': 0.3, 'step': 3},
              dict(loss=1.0, epoch=4, step=4)]
    write_run(tmp_path, 'a', first, mtime=1_000_000)
    (tmp_path / 'b').mkdir()  # killed before it logged anything
    write_run(tmp_path, 'c', second, mtime=2_000_000)
    rows, resumed_after = resumed_scalars([tmp_path / name for name in 'abc'])
    assert rows == first[:4] + second and resumed_after == [2]
    assert resumed_scalars([tmp_path / 'a']) == (first, [])


def test_a_line_cut_off_by_the_kill_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / 'a' / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text('{"loss": 1.0, "epoch": 1, "step": 1}\n{"loss": 2.0, "ep')
    assert resumed_scalars([tmp_path / 'a']) == ([dict(loss=1.0, epoch=1, step=1)], [])
    path.write_text('{"loss": 1.0, "ep\n{"loss": 2.0, "epoch": 1, "step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        resumed_scalars([tmp_path / 'a'])
