"""Batch-mixing guard: a clip's output must not depend on the other clips of its batch.

A ``Recognizer2D`` folds the segments of every clip into one batch of frames; TSM-style modules (the
TSM, TIN and TANet backbones, the TSM head) reshape them back into clips with a fixed ``num_segments``.
At a segment count other than that one the model either fails or, when the batch's frame count still
divides, runs and silently mixes frames of different clips. :func:`find_batch_mixing` checks every grid
shape of the plan before training: in eval mode and without gradients, two random clips run as one
batch and each alone, and their outputs must agree within :data:`TOLERANCE`.

It sees what the model does at its current weights: a path whose weights are all zero (a branch that
starts at zero) shows no dependence until training moves them.
"""
from __future__ import annotations

import torch

from mmmultigrid.models.feature_map import output_tensors
from mmmultigrid.plan import GridShape, MultigridPlan, describe_use
from mmmultigrid.models.segments import clip_batch, is_2d

#: Largest difference between a clip's output in a batch of 2 and alone, relative to the largest
#: output, taken as the same output (float32 reductions over different batch sizes differ by ~1e-6).
TOLERANCE = 1e-4
#: Factors the random clips are scaled by, in turn, until the model's outputs are finite.
INPUT_SCALES = (1.0, 1e-3, 1e-6)
#: Errors a forward raises on a shape it cannot take.
FORWARD_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)


def clip_outputs(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The recognizer's output for a batch, one row per output row: the head's scores where it has a
    head, else the neck's (or backbone's) features, every tensor flattened after its first axis."""
    stage = 'head' if getattr(model, 'with_cls_head', False) else 'neck'
    tensors = output_tensors(model.extract_feat(inputs, stage=stage)[0])
    rows = {t.shape[0] for t in tensors}
    if len(rows) != 1:
        raise RuntimeError(f'outputs of different batch sizes {sorted(rows)}')
    return torch.cat([t.reshape(t.shape[0], -1).float() for t in tensors], dim=1)


def segment_counts(model: torch.nn.Module) -> dict[str, int]:
    """``model.<part>.num_segments=N (Type)`` -> N for each top-level part of the model built with a
    fixed segment count."""
    return {f'model.{name}.num_segments={part.num_segments} ({type(part).__name__})': part.num_segments
            for name, part in model.named_children()
            if isinstance(getattr(part, 'num_segments', None), int)}


def mixing_problem(model: torch.nn.Module, clip_len: int, crop_size: int,
                   generator: torch.Generator) -> str | None:
    """Why a clip of (T, S) depends on the other clip of a batch of 2, or None when it does not.

    A deep model in eval mode at its initial weights can overflow (its batch norms hold the initial
    statistics); the clips are then scaled down by :data:`INPUT_SCALES` until every output is finite,
    since a network of ReLUs and normalisations scales its activations with its input. A model whose
    outputs stay non-finite at every scale cannot be compared, and passes.
    """
    a, b = (clip_batch(model, 1, clip_len, crop_size, generator) for _ in range(2))
    for input_scale in INPUT_SCALES:
        try:
            pair = clip_outputs(model, input_scale * torch.cat([a, b]))
        except FORWARD_ERRORS as error:
            return (f'the model cannot run a batch of 2 clips of this shape ({type(error).__name__}: '
                    f'{error})')
        if pair.shape[0] != 2:
            return (f'a batch of 2 clips gives {pair.shape[0]} outputs: the model regroups the frames '
                    'of the batch into clips of another length')
        try:
            alone = torch.cat([clip_outputs(model, input_scale * a), clip_outputs(model, input_scale * b)])
        except FORWARD_ERRORS as error:
            return ('a clip alone fails but a batch of 2 runs, so the model groups frames across clips '
                    f'({type(error).__name__}: {error})')
        if pair.isfinite().all() and alone.isfinite().all():
            return _difference_problem(pair, alone)
    return None


def _difference_problem(pair: torch.Tensor, alone: torch.Tensor) -> str | None:
    scale = alone.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    difference = float((pair - alone).abs().max() / scale)
    if not difference <= TOLERANCE:
        return (f'a clip\'s output changes with the other clip of its batch (largest difference '
                f'{difference:.3g} of the largest output, tolerance {TOLERANCE:g}): the model mixes '
                'the clips of a batch')
    return None


def find_batch_mixing(model: torch.nn.Module, plan: MultigridPlan) -> str | None:
    """The first grid shape of the plan at which a clip's output depends on the other clips of its
    batch, as a message naming the shape, the reason and the config keys to change; None if none.

    ``model`` is a recognizer (not wrapped). At each distinct (T, S), in eval mode without gradients,
    two random clips run as a batch and each alone (4 clip forwards); every module's training flag is
    restored afterwards, and eval mode leaves the batch-norm buffers untouched. The random clips come
    from a generator of their own: the global random state is not used.
    """
    generator = torch.Generator().manual_seed(0)
    modes = [(module, module.training) for module in model.modules()]
    uses = plan.shape_segments()
    checked: set[tuple[int, int]] = set()
    model.eval()
    try:
        with torch.no_grad():
            for shape, segments in uses.items():
                if (shape.clip_len, shape.crop_size) in checked:
                    continue
                checked.add((shape.clip_len, shape.crop_size))
                problem = mixing_problem(model, shape.clip_len, shape.crop_size, generator)
                if problem is not None:
                    return f'{describe_use(shape, segments)}: {problem}; {advice(model, plan, shape)}'
    finally:
        for module, training in modes:
            module.training = training
    return None


def advice(model: torch.nn.Module, plan: MultigridPlan, shape: GridShape) -> str:
    """The config keys that make the model take clips of ``shape``."""
    counts = segment_counts(model)
    if is_2d(model) and any(count != shape.clip_len for count in counts.values()):
        verb = 'reshapes' if len(counts) == 1 else 'reshape'
        return (f'{", ".join(counts)} {verb} the frames of a batch into clips of that many segments '
                f'and this shape has T={shape.clip_len} (the base, SampleFrames.num_clips, is '
                f'{plan.base.clip_len}): set num_segments and SampleFrames.num_clips to the same count, '
                'and give MultigridHook.long_cycle_factors t=1 in every entry (spatial only)')
    return ('change MultigridHook.long_cycle_factors / short_cycle_factors so that the plan avoids this '
            'shape, or the model')
