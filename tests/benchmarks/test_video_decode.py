"""Smoke test of benchmarks/video_decode.py on one real clip: the results' structure, the copies' fidelity."""
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'benchmarks'))

import video_decode  # noqa: E402

CLIP_LEN, INTERVAL, CROP = 8, 2, 224


@pytest.fixture(scope='module')
def run(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    """The benchmark on a copy of test.mp4 (1 repeat, 2 starts, T0=8): its JSON, videos and work dirs."""
    root = tmp_path_factory.mktemp('video_decode')
    videos, work_dir, out = root / 'videos', root / 'work', root / 'out.json'
    videos.mkdir()
    shutil.copy(shared_videos / 'test.mp4', videos)
    document = video_decode.main(['--videos', str(videos), '--clip-len', str(CLIP_LEN),
                                  '--frame-interval', str(INTERVAL), '--repeats', '1', '--starts', '2',
                                  '--work-dir', str(work_dir), '--out', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(document))
    return document, videos, work_dir


def test_structure_and_ratios(run: tuple[dict[str, Any], Path, Path]) -> None:
    document, _, _ = run
    assert {'nproc', 'cpu', 'date'} <= set(document['machine'])
    assert document['args']['clip_len'] == str(CLIP_LEN)
    assert [v['name'] for v in document['videos']] == ['test.mp4']
    expected_cases = [(8, 2), (4, 2), (4, 4), (2, 2), (2, 4), (2, 8)]
    assert [(c.clip_len, c.interval) for c in video_decode.cases(CLIP_LEN, INTERVAL)] == expected_cases
    combos = {(e.name, r.name) for e in video_decode.encodings(8) for r in video_decode.readers_for(e)}
    assert len(combos) == 4 + 5 * 3
    rows = document['decode']
    assert {(r['encoding'], r['reader'], r['clip_len'], r['frame_interval']) for r in rows} == {
        (*combo, *case) for combo in combos for case in expected_cases}
    for r in rows:
        assert r['ms'] > 0 and r['ratio'] > 0 and r['ratio_to_own_base'] > 0 and r['open_ms'] > 0
        assert len(r['per_repeat_ms']) == 1 and list(r['per_video_ms']) == ['test.mp4']
    reference = [r for r in rows if (r['encoding'], r['reader'], r['clip_len']) ==
                 ('original', 'threads1', CLIP_LEN)]
    assert [r['ratio'] for r in reference] == [1.0]
    assert document['reference']['ms'] == reference[0]['ms']
    assert {(s['clip_len'], s['crop_size'], s['frame_scale']) for s in document['spatial']} == {
        (t, s, 1.0) for t in (2, 4, 8) for s in (112, 158, 224)} | {(t, 112, 0.5) for t in (2, 4, 8)}
    assert all(s['ms'] > 0 for s in document['spatial'])
    grid = document['multigrid']
    assert [(g['clip_len'], g['crop_size']) for g in grid] == [(t, s) for t in (2, 4, 8)
                                                                for s in (112, 158, 224)]
    assert grid[-1]['ideal'] == 1.0 and grid[-1]['policies']['original threads1 (today)']['rel'] == 1.0
    assert grid[0]['ideal'] == pytest.approx(1 / 16)
    assert all(p['rel'] > 0 for g in grid for p in g['policies'].values())
    assert [g['batch_ratio'] for g in grid] == [16, 8, 4, 8, 4, 2, 4, 2, 1]
    assert all(p['per_iteration'] == pytest.approx(p['rel'] * g['batch_ratio'])
               for g in grid for p in g['policies'].values())


def test_file_sizes_recorded(run: tuple[dict[str, Any], Path, Path]) -> None:
    document, videos, work_dir = run
    encodings = document['encodings']
    assert list(encodings) == [e.name for e in video_decode.encodings(8)]
    original = (videos / 'test.mp4').stat().st_size
    assert encodings['original']['bytes'] == original and encodings['original']['size_rel'] == 1.0
    for name, e in encodings.items():
        assert e['per_video']['test.mp4']['frames'] == 300
        if name != 'original':
            assert e['bytes'] == (work_dir / name / 'test_mp4.mp4').stat().st_size
            assert e['size_rel'] == pytest.approx(e['bytes'] / original)
    assert encodings['h264_source_gop']['mean_gop'] == encodings['original']['mean_gop'] == 150.0
    assert encodings['h264_intra']['mean_gop'] == 1.0
    assert encodings['h264_gop8']['mean_gop'] == pytest.approx(300 / 38)
    assert encodings['h264_intra_half']['per_video']['test.mp4']['width'] == 170
    assert encodings['h264_intra_half']['per_video']['test.mp4']['height'] == 128


def test_intra_copy_decodes_to_the_original_frames(run: tuple[dict[str, Any], Path, Path]) -> None:
    """Up to codec loss: the all-intra copy's frames at the same indices, as the loader reads them."""
    document, videos, work_dir = run
    inds = np.array([0, 1, 2, 57, 150, 234, 235, 299])
    original = video_decode.decode(videos / 'test.mp4', inds)
    copy = video_decode.decode(work_dir / 'h264_intra' / 'test_mp4.mp4', inds)
    assert copy.shape == original.shape == (len(inds), 256, 340, 3)
    per_frame = np.abs(copy.astype(np.float32) - original).mean(axis=(1, 2, 3))
    assert per_frame.mean() < 3 and per_frame.max() < 4, per_frame
    assert video_decode.mean_abs_diff(videos / 'test.mp4', work_dir / 'h264_intra' / 'test_mp4.mp4',
                                      inds) == pytest.approx(per_frame.mean(), rel=1e-4)
    # A frame off by one differs far more: the comparison does see misaligned indices.
    shifted = video_decode.decode(work_dir / 'h264_intra' / 'test_mp4.mp4', inds[1:] - 1)
    assert np.abs(shifted.astype(np.float32) - original[1:]).mean() > per_frame.mean()
    assert document['encodings']['h264_intra']['mean_abs_diff'] < 3


def test_range_read_gives_the_clip_frames(run: tuple[dict[str, Any], Path, Path]) -> None:
    """The range read picks the same frames as ``get_batch(frame_inds)``, wrapped indices included."""
    _, _, work_dir = run
    path = work_dir / 'h264_gop8_half' / 'test_mp4.mp4'
    ranged = next(r for r in video_decode.READERS if r.range_read)
    for inds in (np.arange(8) * 4 + 100, np.array([296, 298, 0, 2])):
        expected = video_decode.decode(path, inds)
        frames = video_decode.read(video_decode.open_reader(path, ranged, (340, 256)), ranged, inds)
        assert frames.shape == (len(inds), 128, 170, 3) and np.array_equal(frames, expected)
