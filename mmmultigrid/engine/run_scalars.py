"""What mmengine logged for a run: ``LocalVisBackend``'s ``vis_data/scalars.json`` and the metrics
``LoggerHook`` writes after a test (``<timestamp>/<timestamp>.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_file(work_dir: Path, pattern: str, missing: str) -> Path:
    """The most recently written file matching ``pattern`` under ``work_dir``; ``missing`` ends the
    error when there is none."""
    runs = sorted(Path(work_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f'no {pattern} under {work_dir}: {missing}')
    return runs[-1]


def latest_scalars(work_dir: Path) -> list[dict[str, Any]]:
    """The rows (one JSON object a line) of the latest run's ``vis_data/scalars.json`` under
    ``work_dir``: training rows carry ``loss``, validation rows ``acc/top1``."""
    path = latest_file(work_dir, '*/vis_data/scalars.json', 'the run logged nothing (did it train, '
                       'with LocalVisBackend among the visualizer backends?)')
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``scalars.json`` a killed process may have left: none when it is missing, its last
    line dropped when the kill cut it off mid-way."""
    lines = path.read_text().splitlines() if path.exists() else []
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return rows


def resumed_scalars(log_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of one run that trained in several processes, ``log_dirs`` (the ``<timestamp>``
    folders of its processes) in the order they ran, and the epochs the later ones resumed after.

    A process started with ``--resume`` continues after its checkpoint's epoch E: rows of the earlier
    processes after E (an epoch cut off part-way, its validation) are dropped, so every iteration and
    validation appears once, as the run that went on kept it."""
    rows: list[dict[str, Any]] = []
    resumed_after: list[int] = []
    for log_dir in log_dirs:
        segment = read_rows(Path(log_dir) / 'vis_data' / 'scalars.json')
        train = [r for r in segment if 'loss' in r]
        if not train:
            continue  # ended before its first logged iteration: nothing of it counts
        if rows:
            epoch = train[0]['epoch'] - 1
            resumed_after.append(epoch)
            rows = [r for r in rows if (r['epoch'] if 'epoch' in r else r['step']) <= epoch]
        rows += segment
    return rows, resumed_after


def latest_test_metrics(work_dir: Path) -> dict[str, Any]:
    """The metrics of the latest ``tools/test.py`` run under ``work_dir``."""
    return json.loads(latest_file(work_dir, '*/*.json', 'the test did not run').read_text())
