"""tools/plan.py: the table, --json (a subprocess, stdout pure JSON), --plot, config errors, the
feature map per grid shape (the model is built only where a test needs it)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs' / 'slowfast_r50_8xb8-8x8x1-steplr-239e_kinetics400-rgb_multigrid.py'
COSINE_CONFIG = REPO / 'configs' / 'slowfast_r50_8xb8-8x8x1-256e_kinetics400-rgb_multigrid.py'
SYNTHETIC_CONFIG = REPO / 'configs' / 'synthetic_r3d_multigrid.py'
EXAMPLE_ENDS = [73, 110, 142, 158, 205, 228, 248, 259, 291, 308, 322, 329, 343, 358]
EXAMPLE_LR = [8, 4, 2, 1, 0.8, 0.4, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01, 0.01, 0.001]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def tool() -> ModuleType:
    """tools/plan.py imported as a module."""
    spec = importlib.util.spec_from_file_location('tools_plan', REPO / 'tools' / 'plan.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'plan.py'), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_json_subprocess_reproduces_the_reference_schedule() -> None:
    proc = run_tool(str(CONFIG), '--gpus', '8', '--json', '--no-feature-maps')
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert data['max_epochs'] == 358 and data['world_size'] == 8
    assert data['iteration_speedup'] == pytest.approx(3.42, abs=0.005)
    segments = data['segments']
    assert [s['epoch_end'] for s in segments] == EXAMPLE_ENDS
    assert [s['epoch_begin'] for s in segments] == [0] + EXAMPLE_ENDS[:-1]
    assert [s['lr_factor'] for s in segments] == pytest.approx(EXAMPLE_LR, rel=1e-12)
    assert [(s['batch_size'], s['clip_len'], s['crop_size']) for s in segments[:4]] == [
        (64, 8, 158), (32, 16, 158), (16, 16, 224), (8, 32, 224)]
    assert [[g['batch_size'] for g in s['short_cycle']] for s in segments[:4]] == [
        [128, 64, 64], [64, 32, 32], [64, 32, 16], [32, 16, 8]]
    assert [g['crop_size'] for g in segments[0]['short_cycle']] == [112, 158, 158]
    assert {'lr_stage', 'short_cycle'} <= set(segments[0])
    assert 'feature_maps' not in data and 'warnings' not in data


def test_bad_option_exits_2_with_one_line_error() -> None:
    proc = run_tool(str(CONFIG), '--cfg-options', 'custom_hooks.0.epoch_factor=-1')
    assert proc.returncode == 2
    assert proc.stdout == ''
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'epoch_factor' in errors[0]
    assert 'Traceback' not in proc.stderr


def test_table_lists_every_segment(tool: ModuleType, capsys: pytest.CaptureFixture) -> None:
    slim = ['--cfg-options', 'model.backbone.slow_pathway.base_channels=8',  # the R50's shapes, cheap
            'model.backbone.fast_pathway.base_channels=1',
            'model.cls_head.in_channels=288']  # slow 8 * 32 + fast 1 * 32 output channels
    assert tool.main([str(CONFIG), '--gpus', '8', '--dataset-length', '240000', *slim]) == 0
    out = capsys.readouterr().out
    begins = [0] + EXAMPLE_ENDS[:-1]
    for begin, end in zip(begins, EXAMPLE_ENDS):
        assert f'{begin}-{end} ' in out
    assert '128@112, 64@158, 64@158' in out
    assert 'baseline 896250, multigrid 261582' in out  # 239 * ceil(30000 / 8); exact short cycles
    # The R50 SlowFast's strides: slow and fast pathway at 224 / 32 = 7 px; steps at each grid shape.
    assert re.search(r'^8 +32 x 224 +142-158, 248-259, 322-358 +8x7x7 / 32x7x7 +33705$', out, re.M)
    assert 'Optimizer steps (30000 clips per GPU per epoch): multigrid 261582, baseline 896250' in out


def test_json_with_dataset_length(tool: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert tool.main([str(CONFIG), '--gpus', '8', '--json', '--dataset-length', '240000',
                      '--no-feature-maps']) == 0
    data = json.loads(capsys.readouterr().out)
    assert data['iterations'] == dict(dataset_length=240000, samples_per_rank=30000,
                                      baseline=896250, multigrid=261582)
    assert data['segments'][0]['iters_per_epoch'] == 351  # 117 cycles of 256 clips; 48 left


def test_cfg_options_reach_the_plan(tool: ModuleType, capsys: pytest.CaptureFixture) -> None:
    argv = [str(CONFIG), '--json', '--no-feature-maps', '--cfg-options',
            'custom_hooks.0.long_cycle=False']
    assert tool.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data['world_size'] == 1
    assert {(s['batch_size'], s['clip_len'], s['crop_size']) for s in data['segments']} == {
        (8, 32, 224)}


@pytest.mark.parametrize('config', [CONFIG, COSINE_CONFIG], ids=['steplr', 'cosine'])
def test_plot_writes_a_png(tool: ModuleType, tmp_path: Path, config: Path) -> None:
    path = tmp_path / 'plan.png'
    assert tool.main([str(config), '--gpus', '8', '--plot', str(path), '--no-feature-maps']) == 0
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000


def test_lr_samples_follow_iteration_progress(tool: ModuleType) -> None:
    from mmengine.config import Config

    from mmmultigrid.baseline import plan_from_config
    plan = plan_from_config(Config.fromfile(str(COSINE_CONFIG)), 8)
    spans = tool.segment_progress(plan)
    assert spans[0][0] == 0
    last_start, last_rate = spans[-1]
    assert last_start + plan.segments[-1].epochs * last_rate == pytest.approx(1.0)
    epochs, progress, factors = tool.lr_samples(plan, points=500)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert epochs[0] == 0 and epochs[-1] == plan.max_epochs
    assert factors[0] == pytest.approx(8 * 0.1)  # x8 batch, warmup from start_factor 0.1


# --- the feature map per grid shape (configs/synthetic_r3d_multigrid.py: 64 px, total stride 32) ------
def test_feature_map_table_and_warnings(tool: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert tool.main([str(SYNTHETIC_CONFIG), '--dataset-length', '384']) == 0
    captured = capsys.readouterr()
    table = captured.out.split('Backbone output per grid shape')[1].splitlines()
    rows = [line.split('  ') for line in table[3:11]]
    assert re.fullmatch(r'128 +4 x 32 +0-6, 13-15 +2x1x1  \(< 2\) +16', table[3])
    assert sum(int(row[-1]) for row in rows) == 155
    assert table[11] == ('Optimizer steps (384 clips per GPU per epoch): multigrid 155, baseline 576 '
                         '(3.72x fewer)')
    warnings = captured.err.splitlines()
    assert len(warnings) == 3 and all(w.startswith('warning: grid shape (batch ') for w in warnings)
    assert warnings[0].startswith('warning: grid shape (batch 128, T=4, S=32) of epochs 0-6, 13-15: '
                                  "the backbone's feature map 2x1x1")
    assert all('MultigridHook.short_cycle_factors' in w and 'base crop' in w for w in warnings)


def test_stride_16_backbone_gives_no_warning(tool: ModuleType,
                                             capsys: pytest.CaptureFixture) -> None:
    argv = [str(SYNTHETIC_CONFIG), '--cfg-options', 'model.backbone.pool1_stride_s=1']
    assert tool.main(argv) == 0
    captured = capsys.readouterr()
    assert re.search(r'^128 +4 x 32 +0-6, 13-15 +2x2x2$', captured.out, re.M)
    assert 'Optimizer steps per grid shape: give --dataset-length N' in captured.out
    assert 'warning' not in captured.err


def test_json_carries_feature_maps_and_warnings() -> None:
    proc = run_tool(str(SYNTHETIC_CONFIG), '--json', '--dataset-length', '384')
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = data['feature_maps']
    assert rows[0] == dict(batch_size=128, clip_len=4, crop_size=32, epochs=[[0, 6], [13, 15]],
                           feature_maps=[[2, 1, 1]], steps=16)
    assert len(rows) == 8 and sum(row['steps'] for row in rows) == data['iterations']['multigrid']
    assert len(data['warnings']) == 3 and 'S=32)' in data['warnings'][0]
    assert [line for line in proc.stderr.splitlines() if line.startswith('warning: ')] == [
        f'warning: {w}' for w in data['warnings']]


def test_model_errors_exit_2_and_no_feature_maps_skips_the_model(
        tool: ModuleType, capsys: pytest.CaptureFixture) -> None:
    bad = [str(SYNTHETIC_CONFIG), '--cfg-options', 'model.backbone.type=NoSuchNet']
    assert tool.main(bad) == 2
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.startswith('error: the model of the config') and 'NoSuchNet' in captured.err
    assert tool.main(bad + ['--no-feature-maps']) == 0
    assert 'Backbone output' not in capsys.readouterr().out


def test_loader_check_on_the_synthetic_data(synthetic_dataset, tmp_path: Path) -> None:
    """--loader-check loads clips of the config's train dataset at every grid shape: the table, the
    JSON entries and a warning for shapes whose loader work exceeds 2x the base's (videos: nearly
    every large batch); a dataset that cannot be loaded exits 2 naming it."""
    data = [f'train_dataloader.dataset.ann_file={synthetic_dataset.train_ann}',
            f'train_dataloader.dataset.data_prefix.video={synthetic_dataset.video_dir}']
    proc = run_tool(str(SYNTHETIC_CONFIG), '--no-feature-maps', '--loader-check', '1', '--json',
                    '--cfg-options', *data)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    costs = result['loader_costs']
    assert len(costs) == 8 and all(c['seconds_per_clip'] > 0 for c in costs)
    assert [c['cost_vs_base'] for c in costs if (c['batch_size'], c['clip_len'], c['crop_size']) ==
            (8, 16, 64)] == [1.0]
    assert result['warnings'] == [line[len('warning: '):] for line in proc.stderr.splitlines()
                                  if line.startswith('warning: ')]
    assert any("the loader does" in w for w in result['warnings'])
    proc = run_tool(str(SYNTHETIC_CONFIG), '--no-feature-maps', '--loader-check', '1',
                    '--cfg-options', *data)
    assert 'Loader cost per grid shape' in proc.stdout and 'clips/s (2 workers)' in proc.stdout
    proc = run_tool(str(SYNTHETIC_CONFIG), '--no-feature-maps', '--loader-check', '1',
                    '--cfg-options', f'train_dataloader.dataset.ann_file={tmp_path / "none.txt"}')
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(
        'error: the train dataset (train_dataloader.dataset) cannot be loaded') and 'none.txt' in \
        errors[0]


def test_measure_steps_predicts_the_wall_clock_speedup() -> None:
    """--measure-steps times every grid shape and the base shape and predicts the speed-up from them."""
    proc = run_tool(str(SYNTHETIC_CONFIG), '--json', '--dataset-length', '96', '--no-feature-maps',
                    '--measure-steps', '1', '--cfg-options', 'model.backbone.base_channels=2',
                    'model.cls_head.in_channels=16', 'train_dataloader.batch_size=2')
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    times = data['step_times']
    assert times['device'] == 'cpu' and times['steps'] == 1
    assert [(s['batch_size'], s['clip_len'], s['crop_size']) for s in times['shapes']][0] == (2, 16, 64)
    assert len(times['shapes']) == 8  # the base shape is one of the 8 grid shapes
    assert all(s['seconds'] > 0 for s in times['shapes'])
    predicted = times['predicted']
    assert predicted['speedup'] == predicted['baseline_s'] / predicted['multigrid_s']
    assert predicted['iteration_speedup'] == (data['iterations']['baseline']
                                              / data['iterations']['multigrid'])
    assert run_tool(str(SYNTHETIC_CONFIG), '--measure-steps', '-1').returncode == 2
