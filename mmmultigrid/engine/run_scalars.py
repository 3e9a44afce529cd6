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


def latest_test_metrics(work_dir: Path) -> dict[str, Any]:
    """The metrics of the latest ``tools/test.py`` run under ``work_dir``."""
    return json.loads(latest_file(work_dir, '*/*.json', 'the test did not run').read_text())
