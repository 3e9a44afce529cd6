"""benchmarks/speedup.py: the two configs it trains and how it reads their logs (no training here)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mmmultigrid.baseline import plan_from_config
from runs import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import speedup  # noqa: E402

DATA = dict(video_dir=Path('/videos'), train_ann=Path('/train.txt'), val_ann=Path('/val.txt'),
            num_classes=5)


@pytest.mark.parametrize('preset', sorted(speedup.PRESETS))
def test_both_runs_share_the_recipe(preset: str) -> None:
    settings = speedup.PRESETS[preset]
    baseline = speedup.build_config('baseline', settings, DATA)
    multigrid = speedup.build_config('multigrid', settings, DATA)
    for cfg in (baseline, multigrid):
        assert all(cfg.model.backbone[k] == v for k, v in settings['model'].items())
        assert cfg.model.cls_head.num_classes == 5
        assert cfg.train_dataloader.dataset.ann_file == '/train.txt'
        assert cfg.val_dataloader.dataset.data_prefix.video == '/videos'
        assert cfg.optim_wrapper.optimizer.lr == settings['schedule']['lr']
    assert 'batch_sampler' not in baseline.train_dataloader
    assert multigrid.train_dataloader.batch_sampler.type == 'MultigridSampler'
    wrapped = multigrid.train_dataloader.dataset.pipeline[0]
    assert wrapped.type == 'ShapeVaryingPipeline'
    assert wrapped.transforms == baseline.train_dataloader.dataset.pipeline
    plan = plan_from_config(multigrid, 1)
    pipe = settings['pipeline']
    assert (plan.base.clip_len, plan.base.crop_size) == (pipe.get('num_clips', pipe['clip_len']),
                                                          pipe['crop_size'])
    assert plan.baseline_max_epochs == settings['schedule']['max_epochs']


def test_tsm_preset_is_a_spatial_only_2d_plan() -> None:
    """The 2D preset: a Recognizer2D whose backbone, head and sampler agree on 8 segments; the plan
    keeps them and varies only the crop."""
    cfg = speedup.build_config('multigrid', speedup.PRESETS['tsm'], DATA)
    assert cfg.model.type == 'Recognizer2D' and cfg.model.cls_head.num_segments == 8
    (sampler, ) = [t for t in cfg.train_dataloader.dataset.pipeline[0].transforms
                   if t['type'] == 'SampleFrames']
    assert (sampler['clip_len'], sampler['num_clips']) == (1, 8)
    plan = plan_from_config(cfg, 1)
    assert {g.clip_len for s in plan.segments for g in s.shapes} == {8}
    assert {g.crop_size for s in plan.segments for g in s.shapes} == {24, 34, 48}
    assert 'the long cycle is spatial only' in plan.notes[-1]
    (val, ) = [t for t in cfg.val_dataloader.dataset.pipeline if t['type'] == 'SampleFrames']
    assert (val['num_clips'], val['test_mode']) == (8, True)  # evaluation stays at the base shape


def test_rawframes_configs() -> None:
    """--format rawframes: RawframeDataset, ScaledRawFrameDecode (with the copies) in training,
    RawFrameDecode in validation, no DecordInit; the same recipe otherwise."""
    data = dict(DATA, frames_root=Path('/frames'), copies=(57, 40))
    for run in ('baseline', 'multigrid'):
        cfg = speedup.build_config(run, speedup.PRESETS['loader-heavy'], data)
        train = cfg.train_dataloader.dataset.pipeline
        train = train[0].transforms if run == 'multigrid' else train
        assert [t['type'] for t in train[:2]] == ['SampleFrames', 'ScaledRawFrameDecode']
        assert train[1]['copies'] == (57, 40)
        val = [t['type'] for t in cfg.val_dataloader.dataset.pipeline]
        assert val[:2] == ['SampleFrames', 'RawFrameDecode'] and 'DecordInit' not in val
        for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
            assert loader.dataset.type == 'RawframeDataset'
            assert loader.dataset.data_prefix == dict(img='/frames')
    assert speedup.copies_for_config(speedup.build_config('multigrid', speedup.PRESETS['loader-heavy'],
                                                          DATA)) == (57, 40)


@pytest.mark.parametrize('epochs', [6, 12, 18, 20])
def test_validation_points(epochs: int) -> None:
    cfg = speedup.build_config('baseline', speedup.PRESETS['demo'], DATA)
    speedup.set_validation(cfg, epochs)
    loop = cfg.train_cfg
    points = [e for e in range(1, epochs + 1)
              if e >= loop.val_begin and (e % loop.val_interval == 0 or e == epochs)]
    assert len(points) in (speedup.VALIDATIONS, speedup.VALIDATIONS + 1) and points[-1] == epochs


def test_summarize_reads_time_data_wait_and_accuracy(tmp_path: Path) -> None:
    rows = [dict(epoch=1, iter=1, time=2.0, data_time=0.5, loss=1, batch_size=16, clip_len=4,
                 crop_size=32),
            dict(epoch=1, iter=2, time=1.0, data_time=0.0, loss=1, batch_size=8, clip_len=4,
                 crop_size=45),
            {'acc/top1': 0.25, 'step': 1},
            dict(epoch=2, iter=3, time=1.0, data_time=0.25, loss=1, batch_size=16, clip_len=4,
                 crop_size=32),
            {'acc/top1': 0.5, 'step': 2, 'precise_bn_batches': 3}]
    path = tmp_path / '20260101_000000' / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join(json.dumps(r) for r in rows))
    result = speedup.summarize('multigrid', tmp_path, process_s=9.0)
    assert result['wall_clock_s'] == 4.0 and result['iterations'] == 3 and result['top1'] == 0.5
    assert result['validation_curve'] == [dict(epoch=1, wall_clock_s=3.0, top1=0.25),
                                          dict(epoch=2, wall_clock_s=4.0, top1=0.5,
                                               precise_bn_batches=3)]
    assert result['data_wait_share'] == pytest.approx(0.75 / 4.0)
    assert result['data_wait_share_per_shape'] == {'16x4x32': pytest.approx(0.75 / 3.0),
                                                   '8x4x45': 0.0}


def test_summarize_joins_the_processes_of_a_resumed_run(tmp_path: Path) -> None:
    """The log folders of the work dir that ``train`` found there before it started the run
    (``RUN_START``) are another run's; the others are joined as one run resumed after epoch 1."""
    logs = {'20260101_000000': [dict(epoch=1, time=5.0, data_time=0.0, loss=1),
                                {'acc/top1': 0.9, 'step': 1}],
            '20260102_000000': [dict(epoch=1, time=1.0, data_time=0.0, loss=1),
                                {'acc/top1': 0.25, 'step': 1},
                                dict(epoch=2, time=7.0, data_time=0.0, loss=1)],
            '20260103_000000': [dict(epoch=2, time=2.0, data_time=0.0, loss=1),
                                {'acc/top1': 0.5, 'step': 2}]}
    for stamp, rows in logs.items():
        path = tmp_path / stamp / 'vis_data' / 'scalars.json'
        path.parent.mkdir(parents=True)
        path.write_text('\n'.join(json.dumps(r) for r in rows))
    (tmp_path / speedup.RUN_START).write_text(json.dumps(dict(config='', earlier_logs=['20260101_000000'])))
    result = speedup.summarize('baseline', tmp_path, process_s=9.0)
    assert result['validation_curve'] == [dict(epoch=1, wall_clock_s=1.0, top1=0.25),
                                          dict(epoch=2, wall_clock_s=3.0, top1=0.5)]
    assert result['iterations'] == 2 and result['resumed_after_epochs'] == [1]
    assert result['process_wall_clock_s'] is None


def test_curve_is_interpolated_and_flat_after_its_end() -> None:
    points = [(300, 0.9), (100, 0.5)]
    assert speedup.curve_at(points, 50) is None
    assert speedup.curve_at(points, 200) == pytest.approx(0.7)
    assert speedup.curve_at(points, 1000) == 0.9


def test_verdict_says_what_was_measured() -> None:
    results = dict(
        speedup=3.0, predicted_speedup=3.2, val_clips=1024,
        baseline=dict(top1=0.80, wall_clock_s=600.0,
                      validation_curve=[dict(epoch=3, wall_clock_s=300.0, top1=0.40),
                                        dict(epoch=6, wall_clock_s=600.0, top1=0.80)]),
        multigrid=dict(top1=0.70, wall_clock_s=200.0,
                       validation_curve=[dict(epoch=9, wall_clock_s=200.0, top1=0.70)]))
    text = speedup.verdict(results)
    assert '3.00x faster' in text and 'predicts 3.20x' in text
    assert '10.0 points below it (70.0% against 80.0% top-1 on 1024 validation clips)' in text
    assert 'baseline' in text and 'budget_sweep.py' in text
    assert 'the baseline was at' not in text  # it had not validated by 200 s
    results['multigrid'].update(top1=0.795, wall_clock_s=450.0)
    text = speedup.verdict(results)
    assert '0.5 points below' in text and 'budget_sweep.py' not in text
    assert 'the baseline was at 60.0%' in text
