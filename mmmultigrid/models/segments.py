"""2D recognizers (TSN, TSM, TIN, TRN, TANet, TPN-TSM): the segments are the temporal axis.

A ``Recognizer2D`` trains on ``SampleFrames(clip_len=1, num_clips=N)``: N segments spread over the whole
video, folded into the batch as N frames per clip. Multigrid varies N where a 3D recognizer varies its
clip length (:class:`~mmmultigrid.data.pipeline.ShapeVaryingPipeline` sets ``num_clips``); a clip of fewer
segments still spans the whole video, the reference's resampling idea.

Some models reshape the folded frames with a fixed ``num_segments``: the TSM, TIN and TANet backbones,
the TSM and TRN heads (TRN's relation layers are sized by it). Another segment count either fails or,
when the batch's frame count still divides, silently mixes frames of different clips. For these models
the long cycle is spatial only: the default ``long_cycle_factors`` become the same spatial factors with
t = 1 (the plan says so), and factors with t < 1 that the user gave are refused, naming the key.
TSN's average consensus takes any segment count, so TSN varies its segments.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

import torch
from mmaction.models.recognizers import Recognizer2D
from mmaction.registry import MODELS

from mmmultigrid.data.pipeline import describe_pipeline, transform_name
from mmmultigrid.plan import DEFAULT_LONG_CYCLE_FACTORS, MultigridOptions

#: Parts of the model config whose class may fix the segment count.
MODEL_PARTS = ('backbone', 'neck', 'cls_head')
#: The long-cycle factors for a model with a fixed segment count: the default's spatial factors, t = 1.
SPATIAL_LONG_CYCLE_FACTORS = tuple(dict.fromkeys((1.0, s) for _, s in DEFAULT_LONG_CYCLE_FACTORS))


@dataclasses.dataclass(frozen=True)
class FixedSegments:
    """A model part that fixes the number of segments per clip.

    Attributes:
        key: its config key, e.g. ``model.backbone.num_segments``.
        type: its class name, e.g. ``ResNetTSM``.
        count: the segment count it is built with (None where the config gives none and the class has
            no default).
    """

    key: str
    type: str
    count: int | None

    def __str__(self) -> str:
        return f'{self.key}={self.count} ({self.type})'


def _num_segments_default(cls: type) -> Any:
    """The default of ``num_segments`` in ``cls``'s constructor (``inspect.Parameter.empty`` when it
    has none), or None when the constructor does not take it. Follows ``**kwargs`` up the MRO."""
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if 'num_segments' in params:
            return params['num_segments'].default
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
    return None


def fixed_segments(model_cfg: Mapping[str, Any]) -> list[FixedSegments]:
    """The parts of ``model_cfg`` whose class takes ``num_segments``: each fixes the segment count.

    Parts of other registries (``mmpretrain.``, ``torchvision.``, ``timm.``) are not found here; the
    batch-mixing preflight check (:mod:`mmmultigrid.models.batch_mixing`) covers every model.
    """
    found = []
    for part in MODEL_PARTS:
        cfg = model_cfg.get(part)
        if not isinstance(cfg, Mapping) or 'type' not in cfg:
            continue
        kind = cfg['type']
        cls = kind if isinstance(kind, type) else MODELS.get(kind)  # None where not registered
        default = None if cls is None else _num_segments_default(cls)
        if default is None:
            continue
        count = cfg.get('num_segments', None if default is inspect.Parameter.empty else default)
        found.append(FixedSegments(f'model.{part}.num_segments', cls.__name__, count))
    return found


def temporal_options(model_cfg: Mapping[str, Any], transforms: Sequence[dict],
                     options: MultigridOptions, key: str = 'train_dataloader.dataset.pipeline'
                     ) -> tuple[MultigridOptions, tuple[str, ...]]:
    """The options the model allows along the temporal axis of its train ``transforms``, and the
    plan's notes about that axis.

    Raises ``ValueError`` for segments (``num_clips`` above 1) in a model other than a
    ``Recognizer2D``, and for long-cycle factors with t < 1 that the user gave to a model with a fixed
    segment count; the default factors become :data:`SPATIAL_LONG_CYCLE_FACTORS` instead.
    """
    pipeline = describe_pipeline(transforms, key)
    sampler = transform_name(transforms[pipeline.sampler_pos])
    notes = []
    if pipeline.temporal_key == 'num_clips':
        model_type = transform_name(model_cfg) if model_cfg.get('type') else None
        if model_type != 'Recognizer2D':
            raise ValueError(f'{key}: {sampler}.num_clips must be 1 (got {pipeline.clip_len}): '
                             'multigrid varies the segments (num_clips) only in a Recognizer2D, and '
                             f'model.type is {model_type!r}')
        notes.append(f'T is the number of segments per clip ({sampler}.num_clips of the Recognizer2D); '
                     'the segments of any T span the same part of the video')
    elif pipeline.interval_key is None:
        notes.append(f'T is {sampler}.clip_len: frames spread over the whole video, no frame interval')
    fixers = fixed_segments(model_cfg)
    temporal = [(t, s) for t, s in options.long_cycle_factors if t != 1]
    if not (fixers and options.long_cycle and temporal):
        return options, tuple(notes)
    who = ', '.join(map(str, fixers)) + (' fixes' if len(fixers) == 1 else ' fix')
    spatial = ', '.join(f'({t:g}, {s:.3g})' for t, s in SPATIAL_LONG_CYCLE_FACTORS)
    if options.long_cycle_factors != DEFAULT_LONG_CYCLE_FACTORS:
        t, s = temporal[0]
        raise ValueError(
            f'MultigridHook.long_cycle_factors entry ({t:g}, {s:.3g}) asks for '
            f'{max(1, round(pipeline.clip_len * t))} of the {pipeline.clip_len} segments, but {who} the '
            'segment count: the model reshapes the frames of a batch into clips of that many, so '
            'another count fails or mixes frames of different clips; use t=1 in every entry '
            f'(spatial only, e.g. [{spatial}]) or leave long_cycle_factors out to get that default')
    notes.append(f'{who} the segment count: the long cycle is spatial only, long_cycle_factors '
                 f'[{spatial}] (the default factors with t=1; set MultigridHook.long_cycle_factors, '
                 'each with t=1, to choose others)')
    return dataclasses.replace(options, long_cycle_factors=SPATIAL_LONG_CYCLE_FACTORS), tuple(notes)


def is_2d(model: torch.nn.Module) -> bool:
    """Whether ``model`` folds the segments (frames) of its clips into the batch."""
    return isinstance(model, Recognizer2D)


def clip_batch(model: torch.nn.Module, clips: int, clip_len: int, crop_size: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``clips`` clips of ``clip_len`` frames (segments) x ``crop_size``^2 in the layout the recognizer
    takes, on its device: zeros, or standard normal values drawn from ``generator``.

    ``Recognizer2D``: (N, T, C, S, S); otherwise (N, 1, C, T, S, S), the layout of ``Recognizer3D``; C
    the input channels of the model's first 2D (3D) convolution: 3 for RGB, 2 for optical flow (2 x the
    frames per segment for a 2D flow model).
    """
    param = next(model.parameters())
    conv_type = torch.nn.Conv2d if is_2d(model) else torch.nn.Conv3d
    conv = next((m for m in model.modules() if isinstance(m, conv_type)), None)
    channels = conv.in_channels if conv is not None else 3
    if is_2d(model):
        shape = (clips, clip_len, channels, crop_size, crop_size)
    else:
        shape = (clips, 1, channels, clip_len, crop_size, crop_size)
    if generator is None:
        return torch.zeros(shape, device=param.device, dtype=param.dtype)
    return torch.randn(shape, generator=generator).to(param)


def map_size(output: torch.Tensor, clips: int) -> tuple[int, int, int]:
    """(T', H', W') of one backbone output for a batch of ``clips`` clips: (N, C, T', H', W'), or
    (N*T', C, H', W') where the frames are folded into the batch (2D backbones)."""
    if output.dim() == 4:
        return output.shape[0] // clips, int(output.shape[2]), int(output.shape[3])
    return tuple(int(n) for n in output.shape[-3:])
