"""Faults in 2-process (gloo) training: SIGKILL of the whole job mid-shape, then ``--resume``; and a
checkpoint from the middle of multigrid training used by the plain baseline model and tools/test.py.

The single-process SIGKILL + resume and final-checkpoint tests are in tests/engine/hooks/test_multigrid_hook.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import REPO, clean_env, free_port, run, write_tiny_multigrid_config
from test_multigrid_hook import LR, assert_ranks_agree, iterations, rank_traces, read_trace

# 5 baseline epochs, milestones [3, 4]: 8 multigrid epochs; epochs 2-3 share one long-cycle shape.
MAX_EPOCHS, MILESTONES = 5, (3, 4)
KILL_IN_EPOCH = 3  # the second epoch of the (T=4, S=23) long-cycle shape
BASELINE = REPO / 'configs' / 'synthetic_r3d_baseline.py'


def dist_train(config: Path, work_dir: Path, *args: str) -> list[str]:
    return ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir), *args]


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc, parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            pid, rest = stat.read_text().split(' (', 1)
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(rest.rsplit(') ', 1)[1].split()[1]), []).append(int(pid))
    tree = [root]
    for pid in tree:
        tree += children.get(pid, [])
    return tree


def kill_job(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher, every rank and every loader worker, as a lost node would.

    torchrun starts each rank in a session of its own, so killing the launcher's process group
    alone leaves the ranks training.
    """
    for pid in process_tree(launcher.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.wait()


@pytest.fixture(scope='module')
def uninterrupted(two_rank_dataset: SyntheticDataset,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One uninterrupted 2-process run: (config, work_dir)."""
    root = tmp_path_factory.mktemp('faults')
    config = write_tiny_multigrid_config(root / 'tiny.py', two_rank_dataset, max_epochs=MAX_EPOCHS,
                                         milestones=MILESTONES)
    run(dist_train(config, root / 'work'), PORT=str(free_port()), PYTHON=sys.executable)
    return config, root / 'work'


def test_uninterrupted_run_follows_the_plan(uninterrupted: tuple[Path, Path],
                                            two_rank_dataset: SyntheticDataset) -> None:
    config, work_dir = uninterrupted
    assert_ranks_agree(config, work_dir, two_rank_dataset)
    plan = plan_from_config(Config.fromfile(config), 2)
    segment = plan.segment_at(KILL_IN_EPOCH)
    assert segment.epoch_begin < KILL_IN_EPOCH < segment.epoch_end  # the kill is mid-shape
    for record in iterations(rank_traces(work_dir)[0]):
        shape = plan.segment_at(record['epoch']).shapes
        assert (record['batch_size'], record['clip_len'], record['crop_size']) in {
            (g.batch_size, g.clip_len, g.crop_size) for g in shape}
        assert record['lr'] == pytest.approx(LR * plan.segment_at(record['epoch']).lr_factor)


def test_sigkill_of_both_processes_then_resume(uninterrupted: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """Kill the launcher, both ranks and their loader workers mid-epoch; ``--resume`` continues."""
    config, expected_dir = uninterrupted
    work_dir = tmp_path / 'work'
    trace_file = work_dir / 'multigrid_trace.rank0.jsonl'
    proc = subprocess.Popen(dist_train(config, work_dir), cwd=REPO, start_new_session=True,
                            env=clean_env(PORT=str(free_port()), PYTHON=sys.executable),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if trace_file.exists() and any(r['epoch'] == KILL_IN_EPOCH
                                           for r in iterations(read_trace(trace_file))):
                break
            time.sleep(0.02)
        assert proc.poll() is None, 'training ended before it could be killed'
    finally:
        kill_job(proc)
    assert (work_dir / f'epoch_{KILL_IN_EPOCH}.pth').is_file()
    assert not (work_dir / f'epoch_{KILL_IN_EPOCH + 1}.pth').exists(), 'killed too late'

    resumed = run(dist_train(config, work_dir, '--resume'), PORT=str(free_port()),
                  PYTHON=sys.executable)
    assert f'resumed epoch: {KILL_IN_EPOCH}' in resumed.stdout + resumed.stderr
    expected = rank_traces(expected_dir)
    for got, want in zip(rank_traces(work_dir), expected):
        assert iterations(got) == iterations(want)  # shape, LR, epoch and iteration count
    ends = [trace[-1] for trace in rank_traces(work_dir)]
    assert all(end['event'] == 'end' and end['iter'] == expected[0][-1]['iter'] for end in ends)
    assert ends[0]['weights_sha256'] == ends[1]['weights_sha256']  # the ranks still agree


def test_mid_training_checkpoint_in_the_plain_model(uninterrupted: tuple[Path, Path],
                                                    two_rank_dataset: SyntheticDataset,
                                                    tmp_path: Path) -> None:
    """The checkpoint between the two epochs of one long-cycle shape: plain model, tools/test.py."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    _, work_dir = uninterrupted
    checkpoint = work_dir / f'epoch_{KILL_IN_EPOCH}.pth'
    saved = torch.load(checkpoint, weights_only=False)
    assert saved['meta']['epoch'] == KILL_IN_EPOCH and 'multigrid' in saved
    sizes = dict(base_channels=8, num_classes=two_rank_dataset.num_classes, in_channels=64)
    cfg = Config.fromfile(BASELINE)
    cfg.model.backbone.base_channels = sizes['base_channels']
    cfg.model.cls_head.update(num_classes=sizes['num_classes'], in_channels=sizes['in_channels'])
    init_default_scope('mmaction')
    model = MODELS.build(cfg.model)
    model.load_state_dict(saved['state_dict'], strict=True)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bn and all(type(m) is torch.nn.BatchNorm3d and m.num_batches_tracked > 0 for m in bn)

    ds = two_rank_dataset
    tested = run([sys.executable, 'tools/test.py', str(BASELINE), str(checkpoint),
                  '--work-dir', str(tmp_path / 'test'), '--cfg-options',
                  f'model.backbone.base_channels={sizes["base_channels"]}',
                  f'model.cls_head.num_classes={sizes["num_classes"]}',
                  f'model.cls_head.in_channels={sizes["in_channels"]}',
                  f'test_dataloader.dataset.ann_file={ds.val_ann}',
                  f'test_dataloader.dataset.data_prefix.video={ds.video_dir}',
                  'test_dataloader.batch_size=4', 'test_dataloader.num_workers=1',
                  'test_dataloader.dataset.pipeline.1.clip_len=8',
                  'test_dataloader.dataset.pipeline.5.scale=(32,32)'])
    output = tested.stdout + tested.stderr
    assert 'Load checkpoint from' in output and 'acc/top1' in output
    assert 'unexpected key' not in output and 'missing keys' not in output
