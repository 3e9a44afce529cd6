"""``ShapeVaryingPipeline``: the user's train transforms, run at each sample's grid shape.

The wrapped transforms stay as the user wrote them; per grid shape (T, frame interval, S) the wrapper
builds, once per worker, a copy whose ``SampleFrames`` and final crop/resize are retargeted, and caches it.
"""
from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmengine.logging import print_log
from mmaction.registry import TRANSFORMS

from mmmultigrid.plan import GridShape
from mmmultigrid.data.sampler import GridIndex

SAMPLERS = ('SampleFrames', 'DenseSampleFrames', 'UniformSample')
#: Samplers whose clip spreads ``clip_len`` frames over the whole video: no frame interval to vary.
UNIFORM_SAMPLERS = ('UniformSample',)
#: Transforms that fix the output size, with the argument that holds it.
FINAL_SIZE_KEYS = {'Resize': 'scale', 'RandomCrop': 'size', 'CenterCrop': 'crop_size'}
#: Short-side scale jitter ranges whose lower bound follows the crop (the reference rule).
JITTER_KEYS = {'RandomRescale': 'scale_range'}
#: Decoders that take the smallest short side the transforms after them need (``short_side``).
SCALED_DECODERS = ('ScaledRawFrameDecode',)
#: Transforms whose output keeps the same view when their input is uniformly smaller.
RELATIVE_TRANSFORMS = ('MultiScaleCrop', 'RandomResizedCrop', 'Flip', 'ColorJitter')


def transform_name(cfg: dict) -> str:
    kind = cfg.get('type')
    return kind.split('.')[-1] if isinstance(kind, str) else getattr(kind, '__name__', repr(kind))


@dataclass(frozen=True)
class PipelineShape:
    """What a train pipeline says about the base shape, and where.

    Attributes:
        clip_len, frame_interval: T0 and I0 from its frame sampler (I0 is 1 for ``UniformSample``).
        crop_size: S0 from its final fixed-size crop or resize.
        sampler_pos, final_pos: positions of those two transforms in the list.
        temporal_key: the sampler argument that holds T: ``clip_len``, or ``num_clips`` when the
            sampler takes several segments (a ``Recognizer2D``'s ``SampleFrames(clip_len=1,
            num_clips=N)``: T is the number of segments, see :mod:`mmmultigrid.models.segments`).
        interval_key: the sampler argument that holds I, or None (``UniformSample`` has none).
    """

    clip_len: int
    frame_interval: int
    crop_size: int
    sampler_pos: int
    final_pos: int
    temporal_key: str = 'clip_len'
    interval_key: str | None = 'frame_interval'

    @property
    def spans_video(self) -> bool:
        """Whether a clip spans the same time at every T (segments, ``UniformSample``), so the frame
        interval stays I0 instead of growing as T shrinks."""
        return self.temporal_key != 'clip_len' or self.interval_key is None


def describe_pipeline(transforms: Sequence[dict], key: str = 'train_pipeline') -> PipelineShape:
    """Find T0, I0 (the frame sampler) and S0 (the last fixed-size crop/resize) in a list of configs.

    T0 is the sampler's ``clip_len``, or its ``num_clips`` when that is above 1 (segments). Raises
    ``ValueError`` naming ``key`` when the pipeline has no single frame sampler or no final square
    crop/resize.
    """
    if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, dict) for t in transforms):
        raise TypeError(f'{key} must be a list of transform dicts, got {transforms!r}')
    names = [transform_name(t) for t in transforms]
    samplers = [i for i, n in enumerate(names) if n in SAMPLERS]
    if len(samplers) != 1:
        raise ValueError(f'{key} must hold exactly one of {SAMPLERS} to vary the clip length, '
                         f'found {len(samplers)} in {names}')
    sampler, name = transforms[samplers[0]], names[samplers[0]]
    num_clips = sampler.get('num_clips', 1)
    if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f'{key}: {name}.num_clips must be a positive int, got {num_clips!r}')
    if name in UNIFORM_SAMPLERS and num_clips != 1:
        raise ValueError(f'{key}: {name}.num_clips must be 1 in a train pipeline (it samples one '
                         f'clip in training), got {num_clips!r}')
    temporal_key = 'num_clips' if num_clips > 1 else 'clip_len'
    interval_key = None if name in UNIFORM_SAMPLERS else 'frame_interval'
    final = [i for i, t in enumerate(transforms) if _fixed_size(t) is not None]
    if not final or final[-1] < samplers[0]:
        raise ValueError(f'{key} needs a final square crop or resize after {names[samplers[0]]} to '
                         'vary the crop size: Resize(scale=(S, S), keep_ratio=False), RandomCrop(size=S)'
                         f' or CenterCrop(crop_size=S); found {names}')
    for arg in ('clip_len', 'frame_interval') if interval_key else ('clip_len', ):
        value = sampler.get(arg, 1 if arg == 'frame_interval' else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{key}: {name}.{arg} must be a positive int, got {value!r}')
    return PipelineShape(sampler[temporal_key], sampler.get('frame_interval', 1) if interval_key else 1,
                         _fixed_size(transforms[final[-1]]), samplers[0], final[-1], temporal_key,
                         interval_key)


def _fixed_size(cfg: dict) -> int | None:
    """The square output size a transform config fixes, or None."""
    name = transform_name(cfg)
    if name not in FINAL_SIZE_KEYS:
        return None
    value = cfg.get(FINAL_SIZE_KEYS[name])
    if name == 'Resize' and cfg.get('keep_ratio', True):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1] and value[0] > 0:
        return int(value[0])
    return None


def check_container(path: str) -> None:
    """Raise ``ValueError`` for a local video file that is empty or shorter than its container says.

    Reads a few header bytes: the RIFF size of an AVI, the top-level box sizes of an MP4/MOV. A
    truncated AVI makes decord 0.6.0 crash the process (SIGSEGV) when opened from memory, as
    ``DecordInit`` does, so this runs before the wrapped transforms. Other formats, and paths that are
    not local files, pass unchecked.
    """
    if not os.path.isfile(path):
        return
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError('the file is empty (0 bytes)')
    with open(path, 'rb') as f:
        head = f.read(12)
        if head[:4] == b'RIFF' and len(head) >= 8:
            declared = struct.unpack('<I', head[4:8])[0] + 8
            if declared > size:
                raise ValueError(f'truncated: its RIFF header declares {declared} bytes, the file has '
                                 f'{size}')
        elif head[4:8] == b'ftyp':
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                box, kind = struct.unpack('>I4s', f.read(8))
                if box == 1:
                    box = struct.unpack('>Q', f.read(8))[0]
                if box < 8:  # 0: the last box, up to the end of the file; 2-7: not a box size
                    break
                if pos + box > size:
                    raise ValueError(f'truncated: its {kind.decode("latin-1")!r} box ends at byte '
                                     f'{pos + box}, the file has {size}')
                pos += box


def _resized_short_side(cfg: dict) -> int | None:
    """The short side a short-side resize produces at most (``Resize(scale=(-1, R))``, the top of
    ``RandomRescale``'s range), or None for any other transform."""
    name = transform_name(cfg)
    if name == 'RandomRescale':
        return int(max(cfg['scale_range']))
    scale = cfg.get('scale')
    if (name == 'Resize' and cfg.get('keep_ratio', True) and isinstance(scale, (tuple, list))
            and len(scale) == 2 and -1 in scale):
        return int(max(scale))
    return None


def needed_short_side(transforms: Sequence[dict], base: PipelineShape, crop_size: int) -> int | None:
    """The smallest short side a decoded frame needs for crops of ``crop_size``, or None (full size).

    It is the short side of the first short-side resize after the frame sampler, times S/S0 when the
    final transform resizes the crop to S (the crop is then relative: a frame S/S0 times smaller gives
    the same view); a final fixed-size crop takes pixels one for one, so it needs the full short side.
    """
    short = next((s for s in map(_resized_short_side, transforms[base.sampler_pos + 1:base.final_pos])
                  if s is not None), None)
    if short is None:
        return None
    if transform_name(transforms[base.final_pos]) == 'Resize':
        return math.ceil(short * crop_size / base.crop_size)
    return short


def scale_frames(transforms: list[dict], base: PipelineShape, crop_size: int) -> None:
    """Decode (``SCALED_DECODERS``) and resize frames no larger than crops of ``crop_size`` need.

    The decoder gets :func:`needed_short_side`. When only ``RELATIVE_TRANSFORMS`` lie between a
    ``Resize(scale=(-1, R))`` and the final resize, R becomes that short side too: the same view,
    resampled once to the size the crop needs instead of up to R and down again.
    """
    needed = needed_short_side(transforms, base, crop_size)
    for i, cfg in enumerate(transforms):
        if transform_name(cfg) in SCALED_DECODERS:
            cfg['short_side'] = needed
        elif (needed is not None and transform_name(cfg) == 'Resize' and i < base.final_pos
              and _resized_short_side(cfg) is not None and all(
                  transform_name(t) in RELATIVE_TRANSFORMS for t in transforms[i + 1:base.final_pos])
              and transform_name(transforms[base.final_pos]) == 'Resize'):
            cfg['scale'] = (-1, needed)


def span_interval(base: PipelineShape, clip_len: int) -> int:
    """The frame interval at which a clip of ``clip_len`` frames spans the base clip's time (I0 where
    every clip spans the video whatever T)."""
    low = base.frame_interval
    return low if base.spans_video else max(low, low * base.clip_len // clip_len)


def shaped_transforms(transforms: Sequence[dict], base: PipelineShape, clip_len: int,
                      frame_interval: int, crop_size: int, scale_jitter: bool) -> list[dict]:
    """Copies of the transform configs retargeted to (T, interval, S)."""
    out = [dict(t) for t in transforms]
    out[base.sampler_pos][base.temporal_key] = clip_len
    if base.interval_key is not None:
        out[base.sampler_pos][base.interval_key] = frame_interval
    if any(transform_name(cfg) in SCALED_DECODERS for cfg in out):
        scale_frames(out, base, crop_size)
    final = out[base.final_pos]
    key = FINAL_SIZE_KEYS[transform_name(final)]
    final[key] = crop_size if isinstance(final[key], int) else (crop_size, crop_size)
    if scale_jitter:
        for cfg in out:
            key = JITTER_KEYS.get(transform_name(cfg))
            if key is not None:
                low, high = cfg[key]
                cfg[key] = (min(high, round(low * crop_size / base.crop_size)), high)
    return out


@TRANSFORMS.register_module()
class ShapeVaryingPipeline(BaseTransform):
    """Run the wrapped train transforms at the grid shape that ``MultigridSampler`` chose.

    For a sample of grid shape (T, S): ``SampleFrames`` takes ``clip_len=T`` and a frame interval drawn
    uniformly from ``I0 .. I0 * T0 // T`` (so short clips span up to the base clip's time). Where
    every clip spans the whole video whatever T, T is set and the interval stays I0: segments
    (``SampleFrames``/``DenseSampleFrames`` with ``num_clips`` above 1, a ``Recognizer2D``'s temporal
    axis) take ``num_clips=T``, ``UniformSample`` takes ``clip_len=T``. The final
    square crop/resize outputs S, and with ``scale_jitter`` the lower bound of ``RandomRescale``'s short
    side range scales by S/S0. Relative crops (``MultiScaleCrop``, ``RandomResizedCrop``) are unchanged,
    since the final resize sets their output size. With a ``ScaledRawFrameDecode``, frames are decoded
    and resized no larger than the shape needs (:func:`scale_frames`), so they cost about T x S^2.

    Required keys:
        - sample_idx (a ``GridIndex``, set by the dataset from the sampler's index)
        - the required keys of the wrapped transforms

    Added keys:
        - grid_shape (tuple: clip_len, frame_interval, crop_size)
        - the added keys of the wrapped transforms

    Modified keys:
        - sample_idx (becomes a plain int)
        - the modified keys of the wrapped transforms

    Args:
        transforms: The train pipeline, unchanged (a list of transform configs).
        scale_jitter: Scale the lower bound of short-side jitter with the crop, as in the reference.
        skip_broken: Return None for a sample that fails to load (mmengine then loads another one at
            the same shape) and log it, instead of raising an error naming the file.
    """

    def __init__(self, transforms: Sequence[dict], scale_jitter: bool = True,
                 skip_broken: bool = False) -> None:
        self.base = describe_pipeline(transforms, 'ShapeVaryingPipeline.transforms')
        self.transforms = [dict(t) for t in transforms]
        self.scale_jitter = scale_jitter
        self.skip_broken = skip_broken
        self.skipped = 0
        self._pipelines: dict[tuple[int, int, int], Compose] = {}
        self._refetch_shape: GridShape | None = None

    def pipeline(self, clip_len: int, frame_interval: int, crop_size: int) -> Compose:
        """The composed transforms for one grid shape, built on first use."""
        key = (clip_len, frame_interval, crop_size)
        if key not in self._pipelines:
            self._pipelines[key] = Compose(
                shaped_transforms(self.transforms, self.base, *key, self.scale_jitter))
        return self._pipelines[key]

    def frame_intervals(self, clip_len: int) -> tuple[int, int]:
        """The inclusive range of frame intervals for clips of ``clip_len`` frames (or segments)."""
        return self.base.frame_interval, span_interval(self.base, clip_len)

    def _grid_shape(self, results: dict) -> GridShape:
        index = results.get('sample_idx')
        if isinstance(index, GridIndex):
            return index.shape
        if self._refetch_shape is not None:  # mmengine reloads another sample after a skipped one
            shape, self._refetch_shape = self._refetch_shape, None
            return shape
        raise RuntimeError(f'ShapeVaryingPipeline got sample_idx={index!r} without a grid shape: set '
                           'train_dataloader.batch_sampler=dict(type="MultigridSampler") and use the '
                           'dataset directly (dataset wrappers that recompute indices drop the shape)')

    def transform(self, results: dict) -> dict | None:
        shape = self._grid_shape(results)
        low, high = self.frame_intervals(shape.clip_len)
        interval = int(np.random.randint(low, high + 1))
        results['sample_idx'] = int(results['sample_idx'])
        results['grid_shape'] = (shape.clip_len, interval, shape.crop_size)
        try:
            if 'filename' in results:
                check_container(results['filename'])
            return self.pipeline(shape.clip_len, interval, shape.crop_size)(results)
        except Exception as error:
            source = results.get('filename', results.get('frame_dir', f'sample {results["sample_idx"]}'))
            if not self.skip_broken:
                raise RuntimeError(
                    f'failed to load {source}: {type(error).__name__}: {error} (set '
                    'ShapeVaryingPipeline.skip_broken=True to skip broken samples)') from error
            self.skipped += 1
            self._refetch_shape = shape
            print_log(f'skipped broken sample {source} ({type(error).__name__}: {error}); '
                      f'{self.skipped} skipped so far in this worker', logger='current',
                      level=logging.WARNING)
            return None

    def __repr__(self) -> str:
        inner = ', '.join(transform_name(t) for t in self.transforms)
        return (f'{self.__class__.__name__}(transforms=[{inner}], scale_jitter={self.scale_jitter}, '
                f'skip_broken={self.skip_broken})')

