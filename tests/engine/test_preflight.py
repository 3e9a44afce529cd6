"""Preflight: every check fails on a shape that cannot run, naming the shape, its epochs and the key."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import init_default_scope

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.engine import preflight
from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, Segment, \
    build_plan
from mmmultigrid.engine.preflight import PreflightError, check_crops, check_memory, \
    check_temporal_strides, forward_backward, run_preflight
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import train, write_tiny_multigrid_config

HEAD = [dict(type='DecordInit'), dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
        dict(type='DecordDecode')]
TAIL = [dict(type='FormatShape', input_format='NCTHW'), dict(type='PackActionInputs')]


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def make_plan(batch_size: int = 1, clip_len: int = 8, crop_size: int = 32, **options) -> MultigridPlan:
    """A 10-epoch step-LR plan (long and short cycle unless ``options`` say otherwise)."""
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[4, 7]), 10, 0.1)
    return build_plan(BaseShape(batch_size, clip_len, 2, crop_size), MultigridOptions(**options),
                      curve, 10)


def first_use(plan: MultigridPlan, match) -> tuple[Segment, GridShape]:
    """The first (segment, shape) of the plan, in training order, for which ``match(shape)``."""
    return next((s, g) for s in plan.segments for g in s.shapes if match(g))


def assert_names(error: pytest.ExceptionInfo, segment: Segment, shape: GridShape,
                 *keys: str) -> None:
    """The message names the shape, the epochs of its segment and each config key."""
    message = str(error.value)
    assert f'(batch {shape.batch_size}, T={shape.clip_len}, S={shape.crop_size})' in message
    assert f'epochs {segment.epoch_begin}-{segment.epoch_end}' in message
    for key in keys:
        assert key in message, f'{key!r} not in {message!r}'


def tiny_slowfast() -> torch.nn.Module:
    """A real mmaction2 SlowFast recognizer (resample_rate=4, speed_ratio=4), a few channels wide."""
    pathway = dict(type='resnet3d', depth=18, pretrained=None, conv1_stride_t=1, pool1_stride_t=1)
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3dSlowFast', resample_rate=4, speed_ratio=4, channel_ratio=8,
                      slow_pathway=dict(pathway, lateral=True, base_channels=8,
                                        conv1_kernel=(1, 7, 7), inflate=(0, 0, 1, 1)),
                      fast_pathway=dict(pathway, lateral=False, base_channels=1,
                                        conv1_kernel=(5, 7, 7))),
        cls_head=dict(type='SlowFastHead', in_channels=72, num_classes=4)))


def tiny_r3d() -> torch.nn.Module:
    return MODELS.build(dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3d', depth=18, base_channels=4, pretrained=None,
                      pretrained2d=False, inflate=(1, 1, 1, 1), conv1_stride_t=1, pool1_stride_t=1),
        cls_head=dict(type='I3DHead', num_classes=4, in_channels=32)))


def stub_runner(model: torch.nn.Module, pipeline: ShapeVaryingPipeline) -> SimpleNamespace:
    """What run_preflight reads from the Runner."""
    dataset = SimpleNamespace(pipeline=SimpleNamespace(transforms=[pipeline]))
    return SimpleNamespace(model=model, train_dataloader=SimpleNamespace(dataset=dataset))


# --- SlowFast: T must be a multiple of resample_rate ----------------------------------------------
def test_slowfast_clip_len_not_multiple_of_resample_rate() -> None:
    plan = make_plan(clip_len=16)  # long cycle T = 4, 8, 8, 16
    backbone = SimpleNamespace(resample_rate=8, speed_ratio=8)
    with pytest.raises(PreflightError) as error:
        check_temporal_strides(plan, backbone)
    assert_names(error, *first_use(plan, lambda g: g.clip_len == 4), 'resample_rate=8',
                 'MultigridHook.long_cycle_factors', 'SampleFrames.clip_len')
    check_temporal_strides(make_plan(clip_len=32), backbone)  # T = 8, 16, 16, 32: all fit
    check_temporal_strides(plan, SimpleNamespace())  # not a SlowFast backbone: nothing to check
    with pytest.raises(PreflightError, match='T=6'):  # custom factors: 0.75 * 8 = 6
        check_temporal_strides(make_plan(long_cycle_factors=[(0.75, 1), (1, 1)]),
                               SimpleNamespace(resample_rate=4, speed_ratio=4))


def test_slowfast_check_agrees_with_the_real_model() -> None:
    """The shape the check rejects really fails in mmaction2's SlowFast; those it accepts run."""
    model = tiny_slowfast()
    plan = make_plan(clip_len=8, short_cycle=False)  # T = 2, 4, 4, 8 with resample_rate 4
    with pytest.raises(PreflightError, match=re.escape('T=2')):
        check_temporal_strides(plan, model.backbone)
    for clip_len in (2, 4, 8):
        shape = GridShape(2, clip_len, 16)
        if clip_len % model.backbone.resample_rate:
            with pytest.raises(RuntimeError):
                forward_backward(model, shape, torch.device('cpu'))
        else:
            forward_backward(model, shape, torch.device('cpu'))


# --- batch norm groups ------------------------------------------------------------------------------
# --- crops ------------------------------------------------------------------------------------------
def test_random_crop_larger_than_resized_short_side() -> None:
    pipeline = ShapeVaryingPipeline(HEAD + [dict(type='Resize', scale=(-1, 200)),
                                            dict(type='RandomCrop', size=224)] + TAIL)
    plan = make_plan(crop_size=224)  # crops 112, 158 and 224
    with pytest.raises(PreflightError) as error:
        check_crops(plan, pipeline)
    assert_names(error, *first_use(plan, lambda g: g.crop_size > 200), 'crop 224',
                 'short side 200', 'Resize.scale', 'RandomCrop.size')
    check_crops(make_plan(crop_size=192), ShapeVaryingPipeline(
        HEAD + [dict(type='Resize', scale=(-1, 200)), dict(type='RandomCrop', size=192)] + TAIL))


def test_random_rescale_lower_bound_below_the_crop() -> None:
    """With scale_jitter the lower bound follows the crop (200 * 112/224 = 100 at crop 112)."""
    transforms = HEAD + [dict(type='RandomRescale', scale_range=(200, 320)),
                         dict(type='RandomCrop', size=224)] + TAIL
    plan = make_plan(crop_size=224)
    for scale_jitter, short, crop in ((True, 100, 112), (False, 200, 224)):
        with pytest.raises(PreflightError) as error:
            check_crops(plan, ShapeVaryingPipeline(transforms, scale_jitter=scale_jitter))
        assert_names(error, *first_use(plan, lambda g: g.crop_size == crop), f'short side {short}',
                     'RandomRescale.scale_range', 'RandomCrop.size')
    transforms[-3] = dict(type='RandomCrop', size=192)
    check_crops(make_plan(crop_size=192), ShapeVaryingPipeline(transforms))


def test_crop_check_agrees_with_the_real_pipeline(shared_videos: Path) -> None:
    pipeline = ShapeVaryingPipeline(HEAD + [dict(type='Resize', scale=(-1, 200)),
                                            dict(type='RandomCrop', size=224)] + TAIL)
    results = dict(filename=str(shared_videos / 'test.avi'), label=0, start_index=0, modality='RGB')
    with pytest.raises(AssertionError):  # mmaction2's RandomCrop: a bare assert, no message
        pipeline.pipeline(8, 2, 224)(dict(results))
    assert pipeline.pipeline(8, 2, 192)(dict(results))['inputs'].shape == (1, 3, 8, 192, 192)


def test_final_resize_has_no_crop_to_check() -> None:
    pipeline = ShapeVaryingPipeline(HEAD + [dict(type='Resize', scale=(-1, 100)),
                                            dict(type='Resize', scale=(224, 224), keep_ratio=False)]
                                    + TAIL)
    check_crops(make_plan(crop_size=224), pipeline)


# --- memory (CUDA only; its forward/backward is checked on CPU) ---------------------------------
def test_forward_backward_leaves_the_model_unchanged() -> None:
    model = tiny_r3d()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_backward(model, GridShape(4, 4, 16), torch.device('cpu'))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_forward_backward_runs_under_the_training_autocast(cpu_amp: None) -> None:
    """With AmpOptimWrapper the forward is autocast, as in training; grouped BN runs in it."""
    model = tiny_r3d()
    use_grouped_batchnorm(model, 8)
    dtypes: list[torch.dtype] = []
    model.backbone.conv1.conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    amp = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), dtype='bfloat16')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_backward(model, GridShape(16, 4, 16), torch.device('cpu'), amp)  # two BN groups
    forward_backward(model, GridShape(16, 4, 16), torch.device('cpu'),
                     OptimWrapper(optimizer=amp.optimizer))
    assert dtypes == [torch.bfloat16, torch.float32]
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype
               for k, v in model.state_dict().items())


def gpu_runner(optim_wrapper: OptimWrapper) -> SimpleNamespace:
    """A runner whose model claims to be on CUDA (check_memory's forward_backward is patched)."""
    on_gpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device('cuda'))]))
    return SimpleNamespace(model=on_gpu, optim_wrapper=optim_wrapper)


def test_out_of_memory_names_the_largest_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan()
    tried: list[GridShape] = []

    def out_of_memory(module: torch.nn.Module, shape: GridShape, device: torch.device,
                      optim_wrapper: OptimWrapper) -> None:
        tried.append(shape)
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 9.00 GiB')

    monkeypatch.setattr(preflight, 'forward_backward', out_of_memory)
    monkeypatch.setattr(torch.cuda, 'reset_peak_memory_stats', lambda device=None: None)
    with pytest.raises(PreflightError) as error:
        check_memory(gpu_runner(OptimWrapper(optimizer=torch.optim.SGD(tiny_r3d().parameters(),
                                                                       lr=0.1))), plan)
    assert_names(error, *first_use(plan, lambda g: g is tried[0]), 'runs out of GPU memory',
                 'train_dataloader.batch_size')
    assert tried[0].batch_size == max(g.batch_size for s in plan.segments for g in s.shapes)
    tried.clear()
    check_memory(SimpleNamespace(model=tiny_r3d()), plan)  # a CPU model: no forward at all
    assert not tried


def test_failure_under_autocast_names_the_shape_and_the_precision(
        monkeypatch: pytest.MonkeyPatch, cpu_amp: None) -> None:
    """An error only autocast raises (issue 13: grouped BN's buffers) stops start-up, shape named."""
    plan = make_plan()
    amp = AmpOptimWrapper(optimizer=torch.optim.SGD(tiny_r3d().parameters(), lr=0.1),
                          dtype='bfloat16')
    tried: list[GridShape] = []

    def mixed_dtype(module: torch.nn.Module, shape: GridShape, device: torch.device,
                    optim_wrapper: OptimWrapper) -> None:
        assert optim_wrapper is amp
        tried.append(shape)
        raise RuntimeError('mixed dtype (CPU): expect parameter to have scalar type of Float')

    monkeypatch.setattr(preflight, 'forward_backward', mixed_dtype)
    monkeypatch.setattr(torch.cuda, 'reset_peak_memory_stats', lambda device=None: None)
    with pytest.raises(PreflightError) as error:
        check_memory(gpu_runner(amp), plan)
    assert_names(error, *first_use(plan, lambda g: g is tried[0]), 'autocast to torch.bfloat16',
                 'optim_wrapper.type=AmpOptimWrapper', 'mixed dtype')


# --- in training: at start-up, before the first iteration; preflight=False skips it ------------------
def test_training_fails_at_start_up_and_preflight_false_skips(synthetic_dataset: SyntheticDataset,
                                                               tmp_path: Path) -> None:
    """A 32 px crop cut from frames resized to a short side of 24: refused before the first iteration;
    with ``preflight=False`` training starts and fails at the first 32 px batch instead."""
    too_small = ("train_pipeline[3]['scale'] = (-1, 24)\n"
                 "train_pipeline[4:6] = [dict(type='RandomCrop', size=32)]")
    failing = write_tiny_multigrid_config(tmp_path / 'bad_crop.py', synthetic_dataset, max_epochs=2,
                                          milestones=(1, ), extra=too_small)
    proc = train(failing, tmp_path / 'failing', check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('mmmultigrid.engine.preflight.PreflightError: grid shape (batch ')
    assert 'crop 32 exceeds the short side 24 set by Resize' in last
    assert not (tmp_path / 'failing' / 'multigrid_trace.rank0.jsonl').exists()  # no iteration ran

    skipped = write_tiny_multigrid_config(tmp_path / 'skipped.py', synthetic_dataset, max_epochs=2,
                                          milestones=(1, ), hook='trace=True, preflight=False',
                                          extra=too_small)
    proc = train(skipped, tmp_path / 'skipped', check=False)
    assert 'preflight:' not in proc.stdout + proc.stderr
    assert proc.returncode != 0
    trace = (tmp_path / 'skipped' / 'multigrid_trace.rank0.jsonl').read_text().splitlines()
    assert trace and all(json.loads(line)['crop_size'] < 32 for line in trace)
