"""Preflight: check every grid shape of the plan against the model and data before iteration one.

A shape that cannot run should fail in seconds at start-up, not at hour ten when its segment begins. Each
failure names the shape, the epochs of the segment that uses it and the config key to change.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmmultigrid.models.batch_mixing import find_batch_mixing
from mmmultigrid.models.embeddings import embedding_problems
from mmmultigrid.models.feature_map import log_feature_maps, output_tensors
from mmmultigrid.data.loader_check import format_loader_costs, loader_cost_warnings, measure_loader_costs
from mmmultigrid.data.pipeline import FINAL_SIZE_KEYS, ShapeVaryingPipeline, transform_name
from mmmultigrid.plan import GridShape, MultigridPlan, Segment, describe_use, shapes_in_use
from mmmultigrid.models.segments import clip_batch


class PreflightError(ValueError):
    """A grid shape of the plan cannot run with this model or data."""


def _where(segment: Segment, shape: GridShape) -> str:
    return describe_use(shape, [segment])


def check_temporal_strides(plan: MultigridPlan, backbone: torch.nn.Module) -> None:
    """SlowFast-style backbones need T divisible by ``resample_rate`` and the fast stride."""
    tau = getattr(backbone, 'resample_rate', None)
    alpha = getattr(backbone, 'speed_ratio', None)
    if not tau:
        return
    fast_stride = max(1, tau // alpha) if alpha else 1
    for segment, shape in shapes_in_use(plan):
        if shape.clip_len % tau or shape.clip_len % fast_stride:
            raise PreflightError(
                f'{_where(segment, shape)}: T={shape.clip_len} is not a multiple of the backbone\'s '
                f'resample_rate={tau} (speed_ratio={alpha}); change MultigridHook.long_cycle_factors '
                'or SampleFrames.clip_len so every T is a multiple of it')


def check_crops(plan: MultigridPlan, pipeline: ShapeVaryingPipeline) -> None:
    """Crops that cut pixels (RandomCrop/CenterCrop) must fit in the short side resized before them."""
    final = pipeline.transforms[pipeline.base.final_pos]
    if transform_name(final) == 'Resize':
        return
    for segment, shape in shapes_in_use(plan):
        for cfg in pipeline.pipeline(shape.clip_len, pipeline.base.frame_interval,
                                     shape.crop_size).transforms:
            short = _short_side(cfg)
            if short is not None and shape.crop_size > short:
                name = type(cfg).__name__
                key = 'scale_range' if name == 'RandomRescale' else 'scale'
                final_key = f'{transform_name(final)}.{FINAL_SIZE_KEYS[transform_name(final)]}'
                raise PreflightError(f'{_where(segment, shape)}: crop {shape.crop_size} exceeds the '
                                     f'short side {short} set by {name}; raise {name}.{key} or lower '
                                     f'{final_key} in the train pipeline')


def _short_side(transform: object) -> int | None:
    if type(transform).__name__ == 'RandomRescale':
        return int(transform.scale_range[0])
    scale = getattr(transform, 'scale', None)
    if type(transform).__name__ == 'Resize' and isinstance(scale, tuple) and scale[0] == float('inf'):
        return int(scale[1])
    return None


def forward_backward(module: torch.nn.Module, shape: GridShape, device: torch.device,
                     optim_wrapper: OptimWrapper | None = None) -> None:
    """One forward/backward of a zero batch of ``shape`` through the recognizer's ``extract_feat``.

    The input is in the recognizer's layout (:func:`~mmmultigrid.models.segments.clip_batch`). The forward
    runs in ``optim_wrapper.optim_context``, as training's does (autocast with ``AmpOptimWrapper``).
    The model's buffers (batch-norm running statistics) are restored afterwards and the gradients
    cleared.
    """
    saved = [buffer.detach().clone() for buffer in module.buffers()]
    inputs = clip_batch(module, shape.batch_size, shape.clip_len, shape.crop_size).to(device)
    context = optim_wrapper.optim_context(module) if optim_wrapper is not None else nullcontext()
    try:
        with context:
            feats = module.extract_feat(inputs)[0]
        sum(f.float().sum() for f in output_tensors(feats)).backward()
    finally:
        module.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved):
                buffer.copy_(value)


def check_memory(runner, plan: MultigridPlan) -> None:
    """With CUDA: one forward/backward at the largest-batch and the largest-volume shapes.

    It runs with the runner's optimizer wrapper, so under the same autocast as training (``--amp``).
    """
    model = runner.model
    device = next(model.parameters()).device
    if device.type != 'cuda':
        return
    candidates = {max(shapes_in_use(plan), key=lambda p: p[1].batch_size),
                  max(shapes_in_use(plan), key=lambda p: p[1].volume)}
    module = model.module if is_model_wrapper(model) else model
    optim_wrapper = runner.optim_wrapper
    precision = (f'under autocast to {optim_wrapper.cast_dtype or torch.get_autocast_dtype("cuda")} '
                 '(optim_wrapper.type=AmpOptimWrapper, as --amp sets)'
                 if isinstance(optim_wrapper, AmpOptimWrapper) else 'in float32')
    for segment, shape in candidates:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            forward_backward(module, shape, device, optim_wrapper)
        except torch.cuda.OutOfMemoryError as error:
            raise PreflightError(f'{_where(segment, shape)} runs out of GPU memory ({error}); lower '
                                 'train_dataloader.batch_size or the long-cycle factors') from None
        except RuntimeError as error:
            raise PreflightError(f'{_where(segment, shape)} fails in a forward/backward {precision}: '
                                 f'{error}') from error
        finally:
            torch.cuda.empty_cache()
        print_log(f'preflight: {_where(segment, shape)} fits, peak '
                  f'{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB', logger='current')


def log_loader_costs(runner, plan: MultigridPlan, samples: int) -> None:
    """Load ``samples`` clips per grid shape; log the loader's cost per shape and a warning for each
    shape where it will not keep up if it just keeps up with the baseline."""
    loader = runner.train_dataloader
    costs = measure_loader_costs(loader.dataset, plan, samples)
    print_log(format_loader_costs(costs, plan, loader.num_workers), logger='current')
    for warning in loader_cost_warnings(plan, costs, loader.num_workers):
        print_log(f'preflight: {warning}', logger='current', level=logging.WARNING)


def run_preflight(runner, plan: MultigridPlan,
                  samples_per_rank: int | None = None, loader_samples: int = 0) -> None:
    """All checks; raises :class:`PreflightError` on the first shape that cannot run, or at which a
    clip's output depends on the other clips of its batch (:mod:`mmmultigrid.models.batch_mixing`).

    The backbone's feature map at every shape is logged, with warnings for those too small to learn from
    (and the optimizer steps at each shape when ``samples_per_rank``, clips per rank an epoch, is given);
    with ``loader_samples``, so is the loader's cost per shape (:func:`log_loader_costs`).
    """
    module = runner.model.module if is_model_wrapper(runner.model) else runner.model
    check_temporal_strides(plan, getattr(module, 'backbone', module))
    mixing = find_batch_mixing(module, plan)
    if mixing is not None:
        raise PreflightError(mixing)
    pipeline = next(t for t in runner.train_dataloader.dataset.pipeline.transforms
                    if isinstance(t, ShapeVaryingPipeline))
    check_crops(plan, pipeline)
    for problem in embedding_problems(module, plan):
        raise PreflightError(problem)
    log_feature_maps(module, plan, samples_per_rank)
    if loader_samples:
        log_loader_costs(runner, plan, loader_samples)
    check_memory(runner, plan)
    print_log(f'preflight: {len(set(s for _, s in shapes_in_use(plan)))} grid shapes checked',
              logger='current')
