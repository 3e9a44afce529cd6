"""Rawframes whose decoding cost follows the grid shape: frames extracted once, with smaller copies.

Multigrid asks the loader for up to 16x the base clips per iteration, each with T/4 frames and a crop of
S/2. A video costs about a base clip whatever T and S (decoding runs from the last keyframe, at full
size); stored frames cost what is read, so a clip of T frames costs T frame decodes, and a frame costs
what its size costs. :func:`extract_frames` writes each video's frames as JPEGs in mmaction2's rawframe
layout (``<frame_dir>/img_00001.jpg``, what ``RawframeDataset`` reads) plus smaller copies,
``<frame_dir>/short<N>/img_00001.jpg`` with a short side of N pixels; :class:`ScaledRawFrameDecode`
reads each frame from the smallest copy the grid shape needs (``ShapeVaryingPipeline`` sets the need
per shape), then lets libjpeg downscale by 2, 4 or 8 while decoding when that still covers it.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio
from mmengine.config import Config
from mmaction.registry import TRANSFORMS
from PIL import Image

from mmmultigrid.baseline import plan_from_config, train_transforms
from mmmultigrid.data.pipeline import check_container, describe_pipeline, needed_short_side
from mmmultigrid.plan import MultigridPlan

FILENAME_TMPL = 'img_{:05}.jpg'
START_INDEX = 1  # RawframeDataset's default: frames are numbered from 1
COPY_DIR = 'short{}'
_REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  2: cv2.IMREAD_REDUCED_COLOR_2}
_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'


def check_copies(copies: Iterable[int], key: str) -> tuple[int, ...]:
    """The copies' short sides, largest first; ``ValueError`` naming ``key`` for a bad one."""
    copies = tuple(copies)
    for value in copies:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f'{key} must hold positive ints (short sides in pixels), got {value!r}')
    if len(set(copies)) != len(copies):
        raise ValueError(f'{key} holds a short side twice: {copies!r}')
    return tuple(sorted((int(c) for c in copies), reverse=True))


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """``frame`` with its short side brought down to ``short_side`` (area interpolation; never up)."""
    height, width = frame.shape[:2]
    if min(height, width) <= short_side:
        return frame
    ratio = short_side / min(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def decode_jpeg(data: bytes, path: str, reduction: int = 1) -> np.ndarray:
    """An RGB frame from image bytes, downscaled ``reduction`` (1, 2, 4, 8) times by libjpeg.

    Raises ``ValueError`` naming ``path`` for a truncated JPEG (no end-of-image marker; libjpeg would
    fill the missing rows with grey) and for bytes that do not decode.
    """
    if data[:2] == _JPEG_START and _JPEG_END not in data[-32:]:
        raise ValueError(f'{path}: truncated JPEG ({len(data)} bytes, no end-of-image marker)')
    flag = _REDUCED_FLAGS.get(reduction, cv2.IMREAD_COLOR)
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
    if frame is None:
        raise ValueError(f'{path}: not a decodable image ({len(data)} bytes)')
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def reduction_for(data: bytes, short_side: int | None) -> int:
    """The largest libjpeg reduction (8, 4, 2) whose output short side still covers ``short_side``."""
    if short_side is None or data[:2] != _JPEG_START:
        return 1
    width, height = Image.open(io.BytesIO(data)).size  # parses the header only
    return next((r for r in (8, 4, 2) if math.ceil(min(width, height) / r) >= short_side), 1)


@TRANSFORMS.register_module()
class ScaledRawFrameDecode(BaseTransform):
    """Decode a clip's RGB frames no larger than the pipeline needs (a ``RawFrameDecode`` for multigrid).

    Reads frame ``i`` of the clip from the smallest copy ``<frame_dir>/short<N>/`` with ``N >=
    short_side`` (written by ``tools/extract_frames.py``; the full frames when none is large enough),
    and decodes it downscaled by libjpeg (by 2, 4 or 8) where the result still has ``short_side``
    pixels. With ``short_side=None`` the result equals ``RawFrameDecode``'s (cv2 backend).
    ``ShapeVaryingPipeline`` sets ``short_side`` for each grid shape; the transforms after it resize as
    they would the full frames, so the output equals ordinary decoding up to resampling.

    Required keys:
        - frame_dir, filename_tmpl, frame_inds, modality (``'RGB'``)
        - offset (optional)

    Added keys:
        - imgs, original_shape, img_shape

    Modified keys:
        - frame_inds (squeezed to 1-D)

    Args:
        copies: Short sides of the smaller copies stored in every frame directory.
        short_side: The smallest short side the following transforms need; None: full size.
        reduced_decode: Let libjpeg downscale while decoding.
        backend_args: mmengine file backend arguments (``mmengine.fileio.get``); None: local disk.
    """

    def __init__(self, copies: Sequence[int] = (), short_side: int | None = None,
                 reduced_decode: bool = True, backend_args: dict | None = None) -> None:
        self.copies = check_copies(copies, 'ScaledRawFrameDecode.copies')
        if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int)
                                       or short_side < 1):
            raise ValueError(f'ScaledRawFrameDecode.short_side must be a positive int or None, got '
                             f'{short_side!r}')
        self.short_side = short_side
        self.reduced_decode = reduced_decode
        self.backend_args = backend_args

    def source_dir(self, frame_dir: str) -> str:
        """Where the frames are read from: the smallest copy that covers ``short_side``."""
        if self.short_side is None:
            return frame_dir
        covering = [c for c in self.copies if c >= self.short_side]
        return os.path.join(frame_dir, COPY_DIR.format(covering[-1])) if covering else frame_dir

    def _read(self, path: str) -> bytes:
        try:
            return fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError as error:
            copy = os.path.basename(os.path.dirname(path))
            hint = (f' (copy {copy!r} of ScaledRawFrameDecode.copies={self.copies}: write it with '
                    'tools/extract_frames.py --copies)' if copy.startswith('short') else '')
            raise FileNotFoundError(f'frame file not found: {path}{hint}') from error

    def transform(self, results: dict) -> dict:
        if results['modality'] != 'RGB':
            raise ValueError(f"ScaledRawFrameDecode decodes RGB frames, got modality="
                             f"{results['modality']!r}: use RawFrameDecode for optical flow")
        directory = self.source_dir(results['frame_dir'])
        if results['frame_inds'].ndim != 1:
            results['frame_inds'] = np.atleast_1d(np.squeeze(results['frame_inds']))
        offset = results.get('offset', 0)
        decoded: dict[int, np.ndarray] = {}
        reduction = None
        imgs = []
        for index in results['frame_inds'].tolist():
            if index not in decoded:
                path = os.path.join(directory, results['filename_tmpl'].format(index + offset))
                data = self._read(path)
                if reduction is None:
                    reduction = reduction_for(data, self.short_side) if self.reduced_decode else 1
                decoded[index] = decode_jpeg(data, path, reduction)
                imgs.append(decoded[index])
            else:
                imgs.append(decoded[index].copy())
        results['imgs'] = imgs
        results['original_shape'] = results['img_shape'] = imgs[0].shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(copies={self.copies}, short_side={self.short_side}, '
                f'reduced_decode={self.reduced_decode}, backend_args={self.backend_args})')


def extract_frames(video: str | Path, frame_dir: str | Path, copies: Sequence[int] = (),
                   quality: int = 95, chunk: int = 32) -> int:
    """Write every frame of ``video`` as ``frame_dir/img_00001.jpg ...`` and each copy in ``short<N>/``.

    Frames are decoded with decord (as ``DecordDecode`` does) and written as JPEGs at ``quality``;
    a copy has its short side brought down to N (area interpolation, never enlarged). The directory is
    written under a temporary name and renamed when complete, so an interrupted extraction leaves no
    partial ``frame_dir``; an existing ``frame_dir`` is replaced. Returns the number of frames.
    Raises ``ValueError`` naming ``video`` when it cannot be decoded.
    """
    import decord

    copies = check_copies(copies, 'copies')
    video, frame_dir = str(video), Path(frame_dir)
    partial = frame_dir.with_name(frame_dir.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    try:
        check_container(video)
        reader = decord.VideoReader(video, num_threads=1)
        total = len(reader)
        if total == 0:
            raise ValueError('no frame')
        for copy in copies:
            (partial / COPY_DIR.format(copy)).mkdir(parents=True)
        partial.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        for begin in range(0, total, chunk):
            frames = reader.get_batch(list(range(begin, min(begin + chunk, total)))).asnumpy()
            for offset, rgb in enumerate(frames):
                name = FILENAME_TMPL.format(begin + offset + START_INDEX)
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                _write(partial / name, bgr, params)
                for copy in copies:
                    _write(partial / COPY_DIR.format(copy) / name, resize_short_side(bgr, copy), params)
    except Exception as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f'cannot extract the frames of {video}: {type(error).__name__}: '
                         f'{error}') from error
    shutil.rmtree(frame_dir, ignore_errors=True)
    partial.rename(frame_dir)
    return total


def _write(path: Path, frame: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), frame, params):
        raise OSError(f'cv2.imwrite failed for {path}')


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract_dataset` wrote: the rawframe annotation and the videos it left out."""

    ann_file: Path
    frames_root: Path
    clips: int
    failures: tuple[tuple[str, str], ...]


def frame_dir_name(video: str) -> str:
    """The frame directory of a video path relative to the video root: its path without suffix."""
    return os.path.splitext(video)[0]


def _extract_entry(args: tuple[str, str, tuple[int, ...], int, bool]) -> tuple[int, str]:
    video, frame_dir, copies, quality, reuse = args
    if reuse and all(os.path.isdir(os.path.join(frame_dir, COPY_DIR.format(c))) for c in copies) \
            and os.path.isdir(frame_dir):
        return sum(1 for n in os.listdir(frame_dir) if n.endswith('.jpg')), ''
    try:
        return extract_frames(video, frame_dir, copies, quality), ''
    except ValueError as error:
        return 0, str(error)


def extract_dataset(ann_file: str | Path, video_root: str | Path, frames_root: str | Path,
                    out_ann: str | Path, copies: Sequence[int] = (), quality: int = 95,
                    workers: int = 1, reuse: bool = False) -> Extracted:
    """Extract the frames of every video of a ``VideoDataset`` annotation (``path label...`` lines).

    Writes ``frames_root/<path without suffix>/`` per video and ``out_ann`` in ``RawframeDataset``'s
    format (``frame_dir total_frames label...``), in the annotation's order. Videos that cannot be
    decoded are left out of ``out_ann`` and returned in ``failures`` with their error. With ``reuse``,
    frame directories that already exist are kept (an interrupted run resumes where it stopped).
    """
    copies = check_copies(copies, 'copies')
    lines = [line.split() for line in Path(ann_file).read_text().splitlines() if line.strip()]
    folders: dict[str, str] = {}
    for parts in lines:
        other = folders.setdefault(frame_dir_name(parts[0]), parts[0])
        if other != parts[0]:
            raise ValueError(f'{ann_file}: {other} and {parts[0]} would share the frame folder '
                             f'{frame_dir_name(parts[0])}; rename one of them')
    jobs = [(os.path.join(str(video_root), parts[0]),
             os.path.join(str(frames_root), frame_dir_name(parts[0])), copies, quality, reuse)
            for parts in lines]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(_extract_entry, jobs, chunksize=4))
    else:
        done = [_extract_entry(job) for job in jobs]
    out, failures = [], []
    for parts, (total, error) in zip(lines, done):
        if error:
            failures.append((parts[0], error))
        else:
            out.append(' '.join([frame_dir_name(parts[0]), str(total), *parts[1:]]) + '\n')
    Path(out_ann).parent.mkdir(parents=True, exist_ok=True)
    Path(out_ann).write_text(''.join(out))
    return Extracted(Path(out_ann), Path(frames_root), len(out), tuple(failures))


def copies_for_plan(transforms: Sequence[dict], plan: MultigridPlan,
                    key: str = 'train_dataloader.dataset.pipeline') -> tuple[int, ...]:
    """The copies a plan needs: the short side of every grid shape's crop below the base shape's.

    Computed as ``ShapeVaryingPipeline`` does (:func:`needed_short_side`) over the plan's crop sizes;
    empty when the train pipeline has no short-side resize before its crop.
    """
    base = describe_pipeline(transforms, key)
    full = needed_short_side(transforms, base, base.crop_size)
    needs = {needed_short_side(transforms, base, g.crop_size) for s in plan.segments for g in s.shapes}
    return tuple(sorted((n for n in needs if n is not None and n != full), reverse=True))


def copies_for_config(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """The copies a multigrid config's grid shapes need (:func:`copies_for_plan`)."""
    return copies_for_plan(train_transforms(cfg), plan_from_config(cfg, world_size=1))


def main(argv: Sequence[str] | None = None) -> Extracted:
    """Command line of ``tools/extract_frames.py``."""
    parser = argparse.ArgumentParser(
        description='Extract the frames of a VideoDataset for RawframeDataset, with the smaller copies '
        'that ScaledRawFrameDecode reads at coarse multigrid shapes')
    parser.add_argument('ann_file', type=Path, help='VideoDataset annotation ("path label" lines)')
    parser.add_argument('video_root', type=Path, help='folder the annotation paths are relative to')
    parser.add_argument('frames_root', type=Path, help='where the frame folders are written')
    parser.add_argument('--out-ann', type=Path,
                        help='RawframeDataset annotation to write (default: FRAMES_ROOT/<ann name>)')
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument('--copies', type=int, nargs='+', default=[], metavar='N',
                       help='short sides of the smaller copies')
    sizes.add_argument('--config', help='multigrid config: write the copies its grid shapes need')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality (1-100)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--reuse', action='store_true',
                        help='keep frame folders that already exist (resume an interrupted run)')
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f'--quality must be in 1..100, got {args.quality}')
    if args.workers < 1:
        parser.error(f'--workers must be >= 1, got {args.workers}')
    try:
        copies = (copies_for_config(Config.fromfile(args.config)) if args.config else
                  check_copies(args.copies, '--copies'))
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    out_ann = args.out_ann or args.frames_root / args.ann_file.name
    result = extract_dataset(args.ann_file, args.video_root, args.frames_root, out_ann, copies,
                             args.quality, args.workers, args.reuse)
    print(f'{result.clips} clips -> {result.frames_root} (copies at short sides {list(copies)})\n'
          f'annotation: {result.ann_file}\nin the config:\n'
          f"  dataset: type='RawframeDataset', ann_file='{result.ann_file}', "
          f"data_prefix=dict(img='{result.frames_root}')\n"
          f"  train pipeline: dict(type='ScaledRawFrameDecode', copies={copies}) in place of "
          "DecordInit + DecordDecode")
    for video, error in result.failures:
        print(f'failed: {video}: {error}', file=sys.stderr)
    if result.failures:
        print(f'{len(result.failures)} videos could not be read and are not in the annotation',
              file=sys.stderr)
        raise SystemExit(1)
    return result
