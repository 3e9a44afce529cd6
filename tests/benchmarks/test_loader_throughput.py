"""benchmarks/loader_throughput.py on a real clip, as videos and as rawframes (a scaled-down plan)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from runs import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import loader_throughput  # noqa: E402


@pytest.mark.parametrize('data_format', ['video', 'rawframes'])
def test_every_shape_has_its_cost_vs_base(data_format: str, shared_videos: Path,
                                          tmp_path: Path) -> None:
    videos = tmp_path / 'videos'
    videos.mkdir()
    shutil.copy(shared_videos / 'test.mp4', videos / 'clip.mp4')
    out = tmp_path / 'loader.json'
    loader_throughput.main(['--videos', str(videos), '--base-batch', '1', '--format', data_format,
                            '--num-workers', '1', '--clips', '1', '--in-process-clips', '2',
                            '--profile-repeats', '1', '--frames-dir', str(tmp_path / 'frames'),
                            '--out', str(out)])
    result = json.loads(out.read_text())
    assert result['format'] == data_format
    shapes = result['shapes']
    assert len(shapes) == 8  # the reference plan's distinct grid shapes
    for row in shapes:
        assert row['clips'] == 16 and row['batches'] == 16 // row['batch_size']  # whole batches
        assert row['cost_vs_base'] == pytest.approx(
            row['seconds_per_batch'] / next(r for r in shapes if r['is_baseline'])['seconds_per_batch'])
        assert row['cost_vs_base'] > 0
    assert next(r for r in shapes if r['is_baseline'])['cost_vs_base'] == 1
    decoder = 'ScaledRawFrameDecode' if data_format == 'rawframes' else 'DecordDecode'
    assert decoder in result['transforms']
    assert all(any(decoder in step for step in steps) for steps in result['profile_ms'].values())
    if data_format == 'rawframes':
        frame_dir = tmp_path / 'frames' / 'clip_mp4'
        assert sorted(p.name for p in frame_dir.iterdir() if p.is_dir()) == ['short128', 'short181']
        assert result['decode_vs_span_ms'] == {}
    else:
        assert len(result['decode_vs_span_ms']) == 3
