"""The backbone's output feature map (T' x H' x W') at every grid shape, and the steps spent there.

Multigrid's cheapest shapes shrink the crop to half the base crop and less. Past some point the last
feature map is too small to learn from: :func:`measure_feature_maps` runs one cheap forward per grid
shape, :func:`format_feature_maps` tabulates the sizes with the optimizer steps at each shape, and
:func:`feature_map_warnings` names the shapes below :data:`MIN_FEATURE_SIZE` and the keys to change.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from mmengine.logging import print_log

from mmmultigrid.models.shape_failure import explain_failure
from mmmultigrid.plan import GridShape, MultigridPlan, describe_use, epoch_ranges, shapes_in_use
from mmmultigrid.models.segments import clip_batch, map_size

#: Smallest H' and W' of the backbone's output measured to still teach. ResNet3d of total spatial stride
#: 32 on the synthetic set, 64 px base crop: 2x2 at the base crop, 1x1 at the 32 px short-cycle crop,
#: multigrid ended at 57.6% top-1 against the baseline's 98.6%. Total stride 16 (4x4 at the base crop,
#: 2x2 at the coarsest crop): multigrid 94.5%, its baseline 100%.
MIN_FEATURE_SIZE = 2

#: (T', H', W') of one backbone output.
FeatureMap = tuple[int, int, int]


def output_tensors(feats: Any) -> list[torch.Tensor]:
    """Every tensor of a backbone's output, in order: a tensor, or tuples/lists of them at any depth
    (SlowFast: (slow, fast); MViT: one [patch tokens, class token] list per stage)."""
    if isinstance(feats, torch.Tensor):
        return [feats]
    if isinstance(feats, (list, tuple)):
        return [t for f in feats for t in output_tensors(f)]
    return []


def feature_maps_of(feats: Any) -> tuple[FeatureMap, ...]:
    """(T', H', W') of each tensor of a backbone output for one clip: N x C x T' x H' x W', or T' x C x
    H' x W' from a 2D backbone (frames folded into the batch); pooled features and class tokens (N x C)
    have none."""
    return tuple(map_size(f, 1) for f in output_tensors(feats) if f.dim() in (4, 5))


def measure_feature_maps(model: torch.nn.Module,
                         plan: MultigridPlan) -> dict[GridShape, tuple[FeatureMap, ...]]:
    """For every grid shape of the plan (order of first use), (T', H', W') of each backbone output.

    ``model`` is a recognizer (not wrapped); SlowFast backbones give two outputs (slow, fast),
    backbones that return pooled features or tokens only (TimeSformer, VideoMAE, UniFormerV2) none, a
    ``Recognizer2D``'s backbone one whose T' is its frames (segments) per clip.
    One forward of a single zero clip per distinct (T, S), without gradients, in eval mode on the
    model's device; every module's training flag is restored afterwards and eval mode leaves the
    batch-norm buffers untouched. A forward that fails raises ``RuntimeError`` naming the shape, where
    it fails and which multigrid mode the model can run (:func:`~mmmultigrid.models.shape_failure.explain_failure`).
    """
    modes = [(module, module.training) for module in model.modules()]
    sizes: dict[tuple[int, int], tuple[FeatureMap, ...]] = {}
    model.eval()
    try:
        with torch.no_grad():
            for segment, shape in shapes_in_use(plan):
                key = (shape.clip_len, shape.crop_size)
                if key in sizes:
                    continue
                inputs = clip_batch(model, 1, shape.clip_len, shape.crop_size)
                try:
                    feats = model.extract_feat(inputs, stage='backbone')[0]
                except RuntimeError as error:
                    raise RuntimeError(f'{describe_use(shape, [segment])}: ' + explain_failure(
                        model, plan, shape.clip_len, shape.crop_size, error)) from None
                sizes[key] = feature_maps_of(feats)
    finally:
        for module, training in modes:
            module.training = training
    return {shape: sizes[shape.clip_len, shape.crop_size] for shape in plan.shape_segments()}


def format_size(outputs: tuple[FeatureMap, ...]) -> str:
    """``4x7x7``; several outputs (SlowFast: slow, fast) joined by `` / ``; ``pooled`` for none."""
    return ' / '.join('x'.join(str(n) for n in size) for size in outputs) or 'pooled'


def too_small(outputs: tuple[FeatureMap, ...]) -> bool:
    """Whether H' or W' of any output is below :data:`MIN_FEATURE_SIZE`."""
    return any(min(h, w) < MIN_FEATURE_SIZE for _, h, w in outputs)


def format_feature_maps(plan: MultigridPlan, maps: dict[GridShape, tuple[FeatureMap, ...]],
                        samples_per_rank: int | None = None) -> str:
    """One row per grid shape in order of first use: its epochs, feature map and, with
    ``samples_per_rank`` (clips each rank uses an epoch), the optimizer steps taken at it; then the
    run's total steps against the baseline's."""
    uses = plan.shape_segments()
    steps = None if samples_per_rank is None else plan.shape_iterations(samples_per_rank)
    header = ['batch/GPU', 'T x S', 'epochs', "feature map T'xH'xW'"]
    if steps is not None:
        header.append('steps')
    rows = []
    for shape, outputs in maps.items():
        mark = f'  (< {MIN_FEATURE_SIZE})' if too_small(outputs) else ''
        row = [str(shape.batch_size), f'{shape.clip_len} x {shape.crop_size}',
               epoch_ranges(uses[shape]), format_size(outputs) + mark]
        if steps is not None:
            row.append(str(steps[shape]))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ['Backbone output per grid shape (one clip; SlowFast: slow / fast; MViT: one per stage; '
             'pooled: no spatial map)',
             '  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             '  '.join('-' * w for w in widths)]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if samples_per_rank is not None:
        baseline, multigrid = plan.rank_iterations(samples_per_rank)
        lines.append(f'Optimizer steps ({samples_per_rank} clips per GPU per epoch): multigrid '
                     f'{multigrid}, baseline {baseline}'
                     + (f' ({baseline / multigrid:.2f}x fewer)' if multigrid else ''))
    return '\n'.join(lines)


def feature_map_warnings(plan: MultigridPlan,
                         maps: dict[GridShape, tuple[FeatureMap, ...]]) -> list[str]:
    """One message per grid shape whose H' or W' is below :data:`MIN_FEATURE_SIZE`, naming the shape,
    its epochs and the keys that enlarge it."""
    options = plan.options
    warnings = []
    for shape, segments in plan.shape_segments().items():
        if not too_small(maps[shape]):
            continue
        keys = [f'the base crop (the final crop/resize of the train pipeline, now {plan.base.crop_size})']
        if any(shape in s.shapes[:-1] for s in segments):
            factors = ', '.join(f'{f:.3g}' for f in options.short_cycle_factors)
            keys.append(f'MultigridHook.short_cycle_factors (now [{factors}])')
        if shape.crop_size < plan.base.crop_size and any(shape == s.long_shape for s in segments):
            factors = ', '.join(f'({t:.3g}, {f:.3g})' for t, f in options.long_cycle_factors)
            keys.append(f'MultigridHook.long_cycle_factors (now [{factors}])')
        warnings.append(f"{describe_use(shape, segments)}: the backbone's feature map "
                        f"{format_size(maps[shape])} has H' or W' below MIN_FEATURE_SIZE="
                        f'{MIN_FEATURE_SIZE}, too small to learn from; raise {" or ".join(keys)}, or '
                        'use a backbone with a smaller total spatial stride')
    return warnings


def log_feature_maps(model: torch.nn.Module, plan: MultigridPlan,
                     samples_per_rank: int | None = None) -> None:
    """Measure the feature maps, log their table and each warning (WARNING level, nothing raised)."""
    maps = measure_feature_maps(model, plan)
    print_log(format_feature_maps(plan, maps, samples_per_rank), logger='current')
    for warning in feature_map_warnings(plan, maps):
        print_log(f'preflight: {warning}', logger='current', level=logging.WARNING)
