"""MultigridHook in mmengine's Runner: end-to-end training runs on tiny synthetic data (CPU)."""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.models.batchnorm import GroupedBatchNorm3d
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import REPO, build_runner_in_process, clean_env, free_port, run, train, \
    write_tiny_multigrid_config

LR = 0.05  # configs/synthetic_r3d_baseline.py


def read_trace(path: Path) -> list[dict]:
    """Trace records; where a resumed run repeats an iteration, its later record wins."""
    records: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
        records[(record.get('event', 'iter'), record['iter'])] = record
    return [records[k] for k in sorted(records, key=lambda k: (k[1], k[0] == 'end'))]


def iterations(trace: list[dict]) -> list[dict]:
    return [r for r in trace if 'event' not in r]


def rank_traces(work_dir: Path, world_size: int = 2) -> list[list[dict]]:
    """The trace of every rank of a run in ``work_dir``."""
    return [read_trace(work_dir / f'multigrid_trace.rank{rank}.jsonl') for rank in range(world_size)]


def assert_ranks_agree(config: Path, work_dir: Path, dataset: SyntheticDataset) -> None:
    """Both ranks of a 2-process run on ``dataset``: identical traces (shape, LR, epoch, iteration and
    the final weights' hash) and the plan's iteration count."""
    traces = rank_traces(work_dir)
    assert traces[0] == traces[1]
    end = traces[0][-1]
    assert end['event'] == 'end' and end['iter'] == len(iterations(traces[0])) > 0
    plan = plan_from_config(Config.fromfile(config), 2)
    _, planned_iterations = plan.iterations(len(dataset.train_ann.read_text().splitlines()))
    assert end['iter'] == planned_iterations


@pytest.fixture(scope='module')
def uninterrupted(synthetic_dataset: SyntheticDataset, tmp_path_factory) -> tuple[Path, Path]:
    """One full tiny multigrid run with validation: (config, work_dir)."""
    root = tmp_path_factory.mktemp('uninterrupted')
    config = write_tiny_multigrid_config(root / 'tiny.py', synthetic_dataset, validate=True,
                                         hook='trace=True, measure_steps=1')
    train(config, root / 'work')
    return config, root / 'work'


def test_trains_every_grid_shape_with_planned_lr(uninterrupted: tuple[Path, Path]) -> None:
    config, work_dir = uninterrupted
    plan = plan_from_config(Config.fromfile(config), 1)
    trace = iterations(read_trace(work_dir / 'multigrid_trace.rank0.jsonl'))
    planned = {(g.batch_size, g.clip_len, g.crop_size) for s in plan.segments for g in s.shapes}
    assert {(r['batch_size'], r['clip_len'], r['crop_size']) for r in trace} == planned
    assert len({s.long_shape for s in plan.segments}) == 4  # every long-cycle shape is visited
    assert [r['iter'] for r in trace] == list(range(len(trace)))
    assert max(r['epoch'] for r in trace) == plan.max_epochs - 1 == 5
    for record in trace:
        segment = plan.segment_at(record['epoch'])
        assert record['lr'] == pytest.approx(LR * segment.lr_factor)
        shapes = segment.shapes
        assert (record['batch_size'], record['clip_len'], record['crop_size']) in {
            (g.batch_size, g.clip_len, g.crop_size) for g in shapes}


def test_logs_shape_and_lr_and_validates(uninterrupted: tuple[Path, Path]) -> None:
    _, work_dir = uninterrupted
    logs = list(work_dir.glob('*/*.log'))
    text = logs[0].read_text()
    assert 'Multigrid plan' in text and 'preflight:' in text
    # measure_steps: the step time of every grid shape and the predicted speed-up, at start-up
    assert 'Measured step time on cpu (median of 1 forward' in text
    assert re.search(r'Predicted training time per GPU: baseline \d+ s, multigrid \d+ s: [\d.]+x faster', text)
    assert re.search(r'lr: \S+ .* batch_size: 16\s+clip_len: 2\s+crop_size: 16', text)
    assert 'acc/top1' in text
    scalars = [json.loads(line) for line in next(work_dir.glob('*/vis_data/scalars.json'))
               .read_text().splitlines()]
    train_rows = [row for row in scalars if 'loss' in row]
    assert train_rows and all({'batch_size', 'clip_len', 'crop_size', 'lr'} <= set(row)
                              for row in train_rows)
    # the loop's length is the true total: the last logged iteration is the last of the plan
    trace = iterations(read_trace(work_dir / 'multigrid_trace.rank0.jsonl'))
    assert train_rows[-1]['iter'] == len(trace)


def test_checkpoint_loads_into_the_plain_model(uninterrupted: tuple[Path, Path]) -> None:
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    config, work_dir = uninterrupted
    init_default_scope('mmaction')
    model = MODELS.build(Config.fromfile(config).model)
    state = torch.load(work_dir / 'epoch_6.pth')['state_dict']
    model.load_state_dict(state, strict=True)
    assert type(model.backbone.bn1 if hasattr(model.backbone, 'bn1') else
                model.backbone.conv1.bn) is torch.nn.BatchNorm3d
    assert 'multigrid' in torch.load(work_dir / 'epoch_6.pth')


@pytest.mark.parametrize('kill_in_epoch', [3, 5])
def test_sigkill_then_resume_continues_the_plan(kill_in_epoch: int, uninterrupted, synthetic_dataset,
                                                tmp_path: Path) -> None:
    """SIGKILL in the middle of epoch ``kill_in_epoch`` (0-based), then ``--resume``."""
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset, validate=True)
    work_dir = tmp_path / 'work'
    trace_file = work_dir / 'multigrid_trace.rank0.jsonl'
    proc = subprocess.Popen([sys.executable, 'tools/train.py', str(config), '--work-dir',
                             str(work_dir)], cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if trace_file.exists() and any(r['epoch'] == kill_in_epoch
                                       for r in iterations(read_trace(trace_file))):
            break
        time.sleep(0.05)
    assert proc.poll() is None, 'training ended before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work_dir / f'epoch_{kill_in_epoch + 1}.pth').exists()

    resumed = train(config, work_dir, '--resume')
    assert f'resumed epoch: {kill_in_epoch}' in resumed.stdout + resumed.stderr
    expected = read_trace(uninterrupted[1] / 'multigrid_trace.rank0.jsonl')
    assert iterations(read_trace(trace_file)) == iterations(expected)


def test_resume_with_a_different_plan_is_refused(uninterrupted, synthetic_dataset,
                                                 tmp_path: Path) -> None:
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset, validate=True,
                                         hook='trace=True, epoch_factor=2.0')
    proc = train(config, tmp_path / 'work', '--resume', str(uninterrupted[1] / 'epoch_2.pth'),
                 check=False)
    assert proc.returncode != 0
    assert 'differs from the one in the resumed checkpoint' in proc.stderr


def test_two_processes_agree(two_rank_dataset: SyntheticDataset, tmp_path: Path) -> None:
    config = write_tiny_multigrid_config(tmp_path / 'tiny.py', two_rank_dataset, max_epochs=4)
    work_dir = tmp_path / 'work'
    run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir)],
        PORT=str(free_port()), PYTHON=sys.executable)
    assert_ranks_agree(config, work_dir, two_rank_dataset)


def test_both_cycles_off_reproduce_the_baseline(synthetic_dataset: SyntheticDataset,
                                                tmp_path: Path) -> None:
    """The identity property: long and short cycle off and ``epoch_factor=1.0`` train with the
    baseline's LR and batches, iteration for iteration."""
    multigrid = write_tiny_multigrid_config(
        tmp_path / 'identity.py', synthetic_dataset,
        hook='long_cycle=False, short_cycle=False, epoch_factor=1.0')
    baseline = tmp_path / 'baseline.py'
    baseline.write_text(f"""
_base_ = ['{multigrid}']
train_dataloader = dict(batch_sampler=None, dataset=dict(pipeline={{{{_base_.train_pipeline}}}}))
custom_hooks = []
""")
    logs = {}
    for name, config in (('baseline', baseline), ('multigrid', multigrid)):
        train(config, tmp_path / name)
        scalars = next((tmp_path / name).glob('*/vis_data/scalars.json'))
        logs[name] = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert len(logs['baseline']) == len(logs['multigrid']) == 4 * 24  # 4 epochs of 24 clips
    for base, mg in zip(logs['baseline'], logs['multigrid']):
        assert (mg['epoch'], mg['iter']) == (base['epoch'], base['iter'])
        assert mg['lr'] == pytest.approx(base['lr'], rel=1e-12)
        assert (mg['batch_size'], mg['clip_len'], mg['crop_size']) == (1, 8, 32)
    assert [r['lr'] for r in logs['baseline'][::24]] == pytest.approx([LR, LR, LR / 10, LR / 100])


def test_bf16_autocast_through_the_model_and_hook(cpu_amp: None, synthetic_dataset: SyntheticDataset,
                                                  tmp_path: Path) -> None:
    """AmpOptimWrapper with bfloat16 on CPU: every grid shape trains; BN statistics stay float32."""
    config = write_tiny_multigrid_config(tmp_path / 'amp.py', synthetic_dataset)
    amp = {'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.dtype': 'bfloat16'}
    runner = build_runner_in_process(config, tmp_path / 'work', amp)
    dtypes: set[torch.dtype] = set()  # of training forwards (start-up also runs eval-mode ones)
    runner.model.backbone.conv1.conv.register_forward_hook(
        lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    runner.train()
    plan = plan_from_config(Config.fromfile(config), 1)
    trace = iterations(read_trace(tmp_path / 'work' / 'multigrid_trace.rank0.jsonl'))
    assert {(r['batch_size'], r['clip_len'], r['crop_size']) for r in trace} == {
        (g.batch_size, g.clip_len, g.crop_size) for s in plan.segments for g in s.shapes}
    assert max(r['batch_size'] for r in trace) > 8  # grouped batch norm has run with several groups
    assert dtypes == {torch.bfloat16}
    bns = [m for m in runner.model.modules() if isinstance(m, GroupedBatchNorm3d)]
    assert bns and all(b.running_var.dtype == torch.float32 and b.running_var.isfinite().all()
                       for b in bns)
    assert math.isfinite(runner.message_hub.get_scalar('train/loss').current())
