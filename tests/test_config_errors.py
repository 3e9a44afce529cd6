"""Bad configuration: a ValueError/TypeError naming the config key and the value, at the first chance.

Unit checks for every component that reads the config, and end-to-end runs of tools/train.py showing
that a missing half of the multigrid set-up ends training at once with the fix in the last line.
Covered elsewhere: LR schedulers the plan cannot follow (tests/test_lr_curve.py), bad batch sizes and
InfiniteSampler (tests/data/test_sampler.py), pipelines without SampleFrames or a final crop given to
ShapeVaryingPipeline (tests/data/test_pipeline.py), a resumed checkpoint with another plan
(tests/engine/hooks/test_multigrid_hook.py).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from torch.utils.data import SequentialSampler

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.baseline import HOOK_ARGS, OPTION_NAMES, plan_from_config
from mmmultigrid.engine.hooks.multigrid_hook import MultigridHook, check_pipeline, find_sampler
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline, describe_pipeline
from mmmultigrid.plan import BaseShape, MultigridOptions, build_plan
from mmmultigrid.data.sampler import MultigridSampler
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import train, write_tiny_multigrid_config

PIPELINE = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=16, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 80)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
STEP = dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11])


def config(**changes: Any) -> Config:
    """A multigrid config (the synthetic recipe, inline) with ``changes`` merged in."""
    cfg = Config(dict(
        train_dataloader=dict(batch_size=8, sampler=dict(type='DefaultSampler'),
                              batch_sampler=dict(type='MultigridSampler'),
                              dataset=dict(type='VideoDataset', pipeline=[
                                  dict(type='ShapeVaryingPipeline', transforms=PIPELINE)])),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=12),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        param_scheduler=[STEP],
        custom_hooks=[dict(type='MultigridHook')]))
    cfg.merge_from_dict(changes)
    return cfg


def with_pipeline(transforms: list[dict]) -> Config:
    cfg = config()
    cfg.train_dataloader.dataset.pipeline = [dict(type='ShapeVaryingPipeline',
                                                  transforms=transforms)]
    return cfg


def replaced(index: int, **changes: Any) -> list[dict]:
    """PIPELINE with ``changes`` made to transform ``index``."""
    return [dict(t, **changes) if i == index else t for i, t in enumerate(PIPELINE)]


def test_valid_config_makes_a_plan() -> None:
    """The baseline of every case below: only the named change makes it fail."""
    assert plan_from_config(config(), 1).max_epochs == 18


# --- MultigridHook options ----------------------------------------------------------------------
@pytest.mark.parametrize('options, error, message', [
    (dict(long_cycle='yes'), TypeError, "MultigridHook.long_cycle must be True or False, got 'yes'"),
    (dict(short_cycle=1), TypeError, 'MultigridHook.short_cycle must be True or False, got 1'),
    (dict(long_cycle_factors=[(0.5, )]), TypeError, 'MultigridHook.long_cycle_factors'),
    (dict(long_cycle_factors=[('half', 1)]), TypeError, 'MultigridHook.long_cycle_factors'),
    (dict(long_cycle_factors=0.5), TypeError, 'MultigridHook.long_cycle_factors'),
    (dict(long_cycle_factors=[]), ValueError, 'MultigridHook.long_cycle_factors must not be empty'),
    (dict(long_cycle_factors=[(1.5, 1)]), ValueError, 'entry (1.5, 1) is out of range'),
    (dict(long_cycle_factors=[(0.5, 0)]), ValueError, 'entry (0.5, 0) is out of range'),
    (dict(long_cycle_factors=[(-0.25, 1), (1, 1)]), ValueError, 'entry (-0.25, 1) is out of range'),
    (dict(short_cycle_factors=[0.5, 1.0]), ValueError,
     'MultigridHook.short_cycle_factors entry 1 is out of range'),
    (dict(short_cycle_factors=[0]), ValueError, 'short_cycle_factors entry 0 is out of range'),
    (dict(short_cycle_factors=['a']), TypeError, 'MultigridHook.short_cycle_factors'),
    (dict(short_cycle_factors=[]), ValueError, 'MultigridHook.short_cycle_factors must not be empty'),
    (dict(epoch_factor=0), ValueError, 'MultigridHook.epoch_factor must be > 0, got 0'),
    (dict(epoch_factor=-1.5), ValueError, 'MultigridHook.epoch_factor must be > 0, got -1.5'),
    (dict(epoch_factor='1.5'), TypeError, "MultigridHook.epoch_factor must be a number, got '1.5'"),
    (dict(epoch_factor=True), TypeError, 'MultigridHook.epoch_factor must be a number, got True'),
    (dict(bn_base_size=0), ValueError, 'MultigridHook.bn_base_size must be >= 1, got 0'),
    (dict(bn_base_size=-8), ValueError, 'MultigridHook.bn_base_size must be >= 1, got -8'),
    (dict(bn_base_size=8.0), TypeError, 'MultigridHook.bn_base_size must be an int, got 8.0'),
    (dict(cycle_milestones=[8, 4]), ValueError, 'MultigridHook.cycle_milestones'),
    (dict(cycle_milestones=[0, 4]), ValueError, 'MultigridHook.cycle_milestones'),
    (dict(cycle_milestones=[]), ValueError, 'MultigridHook.cycle_milestones'),
])
def test_bad_hook_options(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        MultigridOptions(**options)
    with pytest.raises(error, match=re.escape(message)):  # the hook takes the same arguments
        MultigridHook(**options)
    with pytest.raises(error, match=re.escape(message)):  # and so does tools/plan.py's config path
        plan_from_config(config(custom_hooks=[dict(type='MultigridHook', **options)]), 1)


def test_unknown_hook_argument() -> None:
    with pytest.raises(TypeError, match='epoch_factr'):
        MultigridHook(epoch_factr=2.0)
    cfg = config(custom_hooks=[dict(type='MultigridHook', epoch_factr=2.0, trace=True,
                                    priority='HIGHEST')])
    with pytest.raises(TypeError, match='MultigridHook has no argument epoch_factr; its arguments '
                                        'are long_cycle, '):
        plan_from_config(cfg, 1)
    assert list(inspect.signature(MultigridHook).parameters) == list(OPTION_NAMES + HOOK_ARGS)


def test_two_hook_entries() -> None:
    with pytest.raises(ValueError, match='custom_hooks holds 2 MultigridHook entries'):
        plan_from_config(config(custom_hooks=[dict(type='MultigridHook')] * 2), 1)


@pytest.mark.parametrize('options, max_epochs, message', [
    (dict(cycle_milestones=[4, 12]), 12, 'MultigridHook.cycle_milestones must hold at least one '
     'epoch below train_cfg.max_epochs=12, got [4, 12]'),
    (dict(epoch_factor=0.1), 4, 'train_cfg.max_epochs x MultigridHook.epoch_factor rounds to 0 '
     'epochs'),
    (dict(long_cycle=False, epoch_factor=0.1), 4, 'MultigridHook.epoch_factor rounds to 0 epochs'),
])
def test_options_the_schedule_cannot_honour(options: dict, max_epochs: int, message: str) -> None:
    curve = parse_lr_schedulers(None, max_epochs, 0.1)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_plan(BaseShape(8, 16, 2, 64), MultigridOptions(**options), curve, max_epochs)


# --- sizes and the schedule -----------------------------------------------------------------------
@pytest.mark.parametrize('changes, message', [
    (dict(train_dataloader=dict(batch_size=0)),
     'batch_size must be a positive int, got 0 (config key: train_dataloader.batch_size)'),
    (dict(train_dataloader=dict(batch_size=-4)), 'got -4 (config key: train_dataloader.batch_size)'),
    (dict(train_dataloader=dict(batch_size=None)),
     'got None (config key: train_dataloader.batch_size)'),
    (dict(train_cfg=dict(max_epochs=0)), 'train_cfg.max_epochs must be a positive int, got 0'),
    (dict(train_cfg=dict(max_epochs=12.5)), 'train_cfg.max_epochs must be a positive int, got 12.5'),
    (dict(optim_wrapper=dict(optimizer=dict(lr=0))),
     'optim_wrapper.optimizer.lr must be a positive number, got 0'),
    (dict(optim_wrapper=dict(optimizer=dict(lr=None))),
     'optim_wrapper.optimizer.lr must be a positive number, got None'),
])
def test_bad_sizes_and_schedule(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_from_config(config(**changes), 1)


def test_iteration_based_loop() -> None:
    cfg = config()
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000)
    with pytest.raises(ValueError, match=re.escape("train_cfg=dict(type=\"EpochBasedTrainLoop\"")):
        plan_from_config(cfg, 1)


@pytest.mark.parametrize('scheduler, message', [
    (dict(type='MultiStepLR', milestones=[12, 20]), 'the milestones of param_scheduler must hold at '
     'least one epoch below train_cfg.max_epochs=12, got []'),
    (dict(type='MultiStepLR', milestones=[]), 'param_scheduler[0].milestones must be a non-empty '
     'list, got []'),
    (dict(type='StepLR', step_size=0), 'param_scheduler[0].step_size must be positive, got 0'),
    (dict(type='LinearLR', begin=5, end=5), 'param_scheduler[0] (LinearLR): begin=5 must be below '
     'end=5'),
    (dict(type='PolyLR', begin=20), 'param_scheduler[0] (PolyLR): begin=20 must be below end=12 '
     '(train_cfg.max_epochs=12)'),
    (dict(type='OneCycleLR', eta_max=0.1), "param_scheduler[0]: LR scheduler 'OneCycleLR' is not "
     'supported'),
    (dict(type='CosineAnnealingLR', T_max=12, by_epoch=False), 'param_scheduler[0] '
     '(CosineAnnealingLR) has by_epoch=False'),
])
def test_lr_schedules_the_plan_cannot_honour(scheduler: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_from_config(config(param_scheduler=[scheduler]), 1)


def test_scheduler_without_type() -> None:
    with pytest.raises(TypeError, match=re.escape('param_scheduler[1].type must be a registry name '
                                                  'string, got None')):
        plan_from_config(config(param_scheduler=[STEP, dict(milestones=[3])]), 1)


# --- the train pipeline ---------------------------------------------------------------------------
KEY = 'train_dataloader.dataset.pipeline'


@pytest.mark.parametrize('transforms, error, message', [
    ([t for t in PIPELINE if t['type'] != 'SampleFrames'], ValueError,
     f"{KEY} must hold exactly one of ('SampleFrames', 'DenseSampleFrames', 'UniformSample')"),
    (PIPELINE[:2] + PIPELINE[1:], ValueError, 'found 2 in'),
    (PIPELINE[:5] + PIPELINE[6:], ValueError, f'{KEY} needs a final square crop or resize after '
     'SampleFrames'),
    (replaced(5, keep_ratio=True), ValueError, 'needs a final square crop or resize'),
    (replaced(5, scale=(64, 48)), ValueError, 'needs a final square crop or resize'),
    (replaced(5, scale=(0, 0)), ValueError, 'needs a final square crop or resize'),
    ([PIPELINE[5]] + PIPELINE[:5] + PIPELINE[6:], ValueError,
     'needs a final square crop or resize after SampleFrames'),
    (replaced(1, num_clips=0), ValueError, f'{KEY}: SampleFrames.num_clips must be a positive int, '
     'got 0'),
    (replaced(1, type='UniformSample', num_clips=2), ValueError, f'{KEY}: UniformSample.num_clips must '
     'be 1 in a train pipeline (it samples one clip in training), got 2'),
    (replaced(1, clip_len=0), ValueError, f'{KEY}: SampleFrames.clip_len must be a positive int, '
     'got 0'),
    (replaced(1, clip_len=None), ValueError, 'SampleFrames.clip_len must be a positive int, got None'),
    (replaced(1, clip_len=16.5), ValueError, 'SampleFrames.clip_len must be a positive int, got 16.5'),
    (replaced(1, frame_interval=-2), ValueError, f'{KEY}: SampleFrames.frame_interval must be a '
     'positive int, got -2'),
    ([t['type'] for t in PIPELINE], TypeError, f'{KEY} must be a list of transform dicts'),
])
def test_bad_train_pipeline(transforms: list, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        plan_from_config(with_pipeline(transforms), 1)
    with pytest.raises(error, match=re.escape(message.replace(KEY, 'ShapeVaryingPipeline.transforms'))):
        ShapeVaryingPipeline(transforms)


def test_segments_outside_a_recognizer2d() -> None:
    """num_clips above 1 is the segment axis of a Recognizer2D; the plan refuses it for other models
    (ShapeVaryingPipeline alone cannot tell)."""
    cfg = with_pipeline(replaced(1, num_clips=3))
    cfg.model = dict(type='Recognizer3D')
    with pytest.raises(ValueError, match=re.escape(
            f"{KEY}: SampleFrames.num_clips must be 1 (got 3): multigrid varies the segments "
            "(num_clips) only in a Recognizer2D, and model.type is 'Recognizer3D'")):
        plan_from_config(cfg, 1)
    cfg.model = dict(type='Recognizer2D')
    assert plan_from_config(cfg, 1).base.clip_len == 3


def test_crop_size_zero_names_the_key() -> None:
    with pytest.raises(ValueError, match=re.escape('crop_size must be a positive int, got 0 (config '
                                                   'key: the final crop/resize of the train pipeline)')):
        plan_from_config(with_pipeline(PIPELINE[:5] + [dict(type='CenterCrop', crop_size=0)]
                                       + PIPELINE[6:]), 1)


def test_pipeline_with_more_than_the_wrapper() -> None:
    cfg = config()
    cfg.train_dataloader.dataset.pipeline.append(dict(type='PackActionInputs'))
    with pytest.raises(ValueError, match=re.escape(f'{KEY} must be exactly [dict(type='
                                                   '"ShapeVaryingPipeline", transforms=train_pipeline)]')):
        plan_from_config(cfg, 1)


def test_dataset_wrapper_is_refused() -> None:
    cfg = config()
    inner = cfg.train_dataloader.dataset
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2, dataset=inner)
    with pytest.raises(ValueError, match='dataset is a RepeatDataset, which recomputes the indices'):
        plan_from_config(cfg, 1)
    # the README's lines add the pipeline to a wrapper too (mmaction2's Kinetics-710 configs)
    cfg.train_dataloader.dataset = dict(type='ConcatDataset', datasets=[inner, inner],
                                        pipeline=inner.pipeline)
    with pytest.raises(ValueError, match='dataset is a ConcatDataset, .* merge the annotation files'):
        plan_from_config(cfg, 1)


def test_test_only_config_says_so() -> None:
    cfg = Config({k: v for k, v in config().to_dict().items() if k != 'train_dataloader'})
    with pytest.raises(ValueError, match='the config has no train_dataloader: it is a test-only'):
        plan_from_config(cfg, 1)


def test_describe_pipeline_names_the_key_it_is_given() -> None:
    with pytest.raises(ValueError, match=re.escape('my_pipeline must hold exactly one')):
        describe_pipeline(PIPELINE[2:], 'my_pipeline')


# --- samplers and the hook's partners, at start-up -----------------------------------------------
def test_sampler_that_cannot_be_wrapped() -> None:
    with pytest.raises(TypeError, match='MultigridSampler wraps an epoch-based sampler .* got '
                                        'SequentialSampler'):
        MultigridSampler(SequentialSampler(range(10)), 2)


def stub_runner(batch_sampler: object, transforms: list[object]) -> SimpleNamespace:
    dataset = SimpleNamespace(pipeline=SimpleNamespace(transforms=transforms))
    return SimpleNamespace(train_dataloader=SimpleNamespace(batch_sampler=batch_sampler,
                                                            dataset=dataset))


def test_hook_needs_the_sampler_and_the_wrapped_pipeline() -> None:
    with pytest.raises(TypeError, match=re.escape('MultigridHook needs train_dataloader.'
                                                  'batch_sampler=dict(type="MultigridSampler"), got '
                                                  'BatchSampler')):
        find_sampler(stub_runner(type('BatchSampler', (), {})(), []))
    with pytest.raises(TypeError, match=re.escape('MultigridHook needs the train pipeline wrapped as '
                                                  f'{KEY}=[dict(type="ShapeVaryingPipeline"')):
        check_pipeline(stub_runner(None, [object()]))


def test_batch_of_another_shape_stops_the_iteration() -> None:
    """Every batch is compared with the plan before the model sees it."""
    plan = build_plan(BaseShape(2, 8, 2, 32), MultigridOptions(), parse_lr_schedulers(None, 8, 0.1), 8)
    sampler = MultigridSampler(DefaultSampler(list(range(64)), shuffle=False), 2)
    sampler.set_plan(plan)
    hook = MultigridHook()
    hook.plan, hook.sampler, hook.epoch_starts = plan, sampler, [0, 100]
    hub = SimpleNamespace(update_scalar=lambda key, value: None)
    runner = SimpleNamespace(epoch=0, iter=0, message_hub=hub, optim_wrapper=SimpleNamespace(
        param_groups=[dict(lr=0.1, initial_lr=0.1)]))
    shape = plan.segments[0].shapes[0]
    clip = torch.zeros(1, 3, shape.clip_len, shape.crop_size, shape.crop_size)
    hook.before_train_iter(runner, 0, dict(inputs=[clip] * shape.batch_size))
    base = torch.zeros(1, 3, 8, 32, 32)  # e.g. a pipeline that ignores the grid shape
    planned = (shape.batch_size, shape.clip_len, shape.crop_size)
    with pytest.raises(RuntimeError, match=re.escape(
            f'epoch 0 batch 0: the plan says (B, T, S) = {planned}, the loader gave '
            f'{(shape.batch_size, 8, 32)}; is the train pipeline wrapped in ShapeVaryingPipeline?')):
        hook.before_train_iter(runner, 0, dict(inputs=[base] * shape.batch_size))


# --- end to end: tools/train.py stops at once, the fix in the last line of its output ---------------
@pytest.mark.parametrize('hook, options, error', [
    # MultigridHook without MultigridSampler: refused at start-up (before_train)
    (True, ['train_dataloader.batch_sampler=None'],
     'TypeError: MultigridHook needs train_dataloader.batch_sampler=dict(type="MultigridSampler")'),
    # MultigridSampler without MultigridHook: refused when the first epoch asks for its batches
    (False, [], 'RuntimeError: MultigridSampler has no plan: add dict(type="MultigridHook") to '
     'custom_hooks'),
    # ShapeVaryingPipeline alone: refused by the first sample, in the loader worker
    (False, ['train_dataloader.batch_sampler=None'],
     'RuntimeError: ShapeVaryingPipeline got sample_idx='),
    # too few clips per GPU for one batch of a short cycle (16 + 8 + 8 clips at batch 1, x2 here)
    (True, ['train_dataloader.batch_size=2'], 'ValueError: epochs 0-2 would have no iteration: '
     '24 clips per GPU do not fill one batch of the short cycle [32, 16, 16]; lower '
     'train_dataloader.batch_size or use more training clips'),
], ids=['hook-without-sampler', 'sampler-without-hook', 'pipeline-without-sampler', 'too-few-clips'])
def test_half_a_multigrid_setup_stops_training(hook: bool, options: list[str], error: str,
                                               synthetic_dataset: SyntheticDataset,
                                               tmp_path: Path) -> None:
    cfg = write_tiny_multigrid_config(tmp_path / 'tiny.py', synthetic_dataset,
                                      extra='' if hook else 'custom_hooks = []')
    proc = train(cfg, tmp_path / 'work', *(['--cfg-options', *options] if options else []),
                 check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(error), proc.stderr[-3000:]
    assert str(synthetic_dataset.train_ann) in proc.stdout  # the run used the test's data
    assert 'Epoch(train)' not in proc.stdout + proc.stderr  # no iteration ran
