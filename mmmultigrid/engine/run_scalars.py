"""The scalars mmengine logged for a run (``LocalVisBackend``'s ``vis_data/scalars.json``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_scalars(work_dir: Path) -> list[dict[str, Any]]:
    """The rows (one JSON object a line) of the latest run's ``vis_data/scalars.json`` under
    ``work_dir``: training rows carry ``loss``, validation rows ``acc/top1``."""
    runs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {work_dir}: the run logged nothing '
                                '(did it train, with LocalVisBackend among the visualizer backends?)')
    return [json.loads(line) for line in runs[-1].read_text().splitlines()]
