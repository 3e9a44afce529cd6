"""Per-clip decord decoding cost of short clips and small crops, on the original files and re-encoded copies.

Multigrid feeds B/B0 = up to 16x more clips per iteration, of T0/4 or T0/2 frames cropped to S0/2 or
S0/sqrt2. With decord each clip costs about what a base clip costs: decord decodes from the keyframe before
the first requested frame to the last one, at full resolution. This script measures, per clip, what
mmaction2's ``DecordInit`` + ``DecordDecode`` (mode ``'accurate'``) do: read the file into ``io.BytesIO``,
open ``decord.VideoReader(file_obj, num_threads=...)``, then ``get_batch(frame_inds).asnumpy()``, for

* readers: ``num_threads=1`` (``DecordInit``'s default, the reference), decord's own default
  ``num_threads=0`` (automatic), decoder-side downscaling ``VideoReader(width=, height=)`` to 1/2 and
  1/4 of the frame size (original files only), and a range read (re-encoded copies only): one
  ``get_batch`` of the clip's whole span, the clip's frames picked out (``get_batch(frame_inds)`` seeks to
  the keyframe before every frame that lies in another GOP than the previous one: on all-intra files,
  before every frame);
* encodings: the original file and copies re-encoded with PyAV (libx264, yuv420p, ``--crf``,
  ``--preset``) with the original's keyframes and no others (same GOPs: the fair codec comparison with
  the original), a short GOP (``--short-gop``), all-intra (GOP 1), and short-GOP / all-intra copies at
  half resolution. Each copy's size relative to the original and its mean absolute difference to the
  original's frames (0-255; half-resolution copies against the original downscaled with ``INTER_AREA``)
  are recorded;
* clips: the base clip (``--clip-len`` T0, ``--frame-interval`` I0) and the short clips T0/2 at strides I0
  and 2*I0 and T0/4 at strides I0, 2*I0 and 4*I0 (a clip of T frames draws its stride uniformly from
  I0 .. I0*T0/T, see ``ShapeVaryingPipeline.frame_intervals``), from ``--starts`` starts spread uniformly
  over each video (indices wrap around in short videos, as ``SampleFrames`` does).

Every clip of every (encoding, reader, clip) case, and the spatial transforms after decoding (``Resize`` to
the short side, ``MultiScaleCrop``, ``Resize`` to S x S, ``Flip``, ``FormatShape``) at every (T, S), runs
once per repeat, in a shuffled order so that the noise of a shared machine hits every case alike; a case's
figure is the median over repeats of its mean per clip. The multigrid table then gives, per grid shape
(T, S) and per loading policy, the expected cost of one clip (open + decode at the stride distribution +
spatial transforms) relative to the base clip as loaded today (original file, ``num_threads=1``, T0, S0),
next to the ideal (T/T0)(S/S0)^2; policies that use half-resolution copies use them at S0/2 only, and
"best read" takes, per stride, the cheaper of ``get_batch(frame_inds)`` and the range read.

Usage::

    python benchmarks/video_decode.py --out benchmarks/results/video_decode_real_clips.json
    python benchmarks/video_decode.py --videos DIR --clip-len 16 --frame-interval 2 --out synthetic.json
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import random
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import av
from av.video.frame import PictureType
import cv2
import decord
import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from loader_throughput import VIDEO_SUFFIXES, machine, write_result  # noqa: E402  (also repairs the OpenMMLab stack)
from mmcv.transforms import Compose  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

ROOT = BENCHMARKS.parent
ORIGINAL = 'original'
REFERENCE_READER = 'threads1'


@dataclasses.dataclass(frozen=True)
class Encoding:
    """A copy of every video: ``gop`` 0 = the original, None = the original's keyframes, 1 = all-intra."""

    name: str
    gop: int | None
    scale: float


@dataclasses.dataclass(frozen=True)
class Reader:
    """How a ``decord.VideoReader`` is opened (threads, decoder-side scale of the frame size) and read.

    ``range_read``: one ``get_batch`` of every frame from the clip's first to its last index, then the
    clip's frames picked out, instead of ``DecordDecode``'s ``get_batch(frame_inds)`` (which seeks to the
    keyframe before every frame that lies in another GOP than the previous one: on all-intra files,
    once per frame).
    """

    name: str
    num_threads: int
    scale: float = 1.0
    range_read: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    """A clip of ``clip_len`` frames ``interval`` apart."""

    clip_len: int
    interval: int

    @property
    def label(self) -> str:
        return f'T={self.clip_len} I={self.interval} span={self.clip_len * self.interval}'


READERS = (Reader('threads1', 1), Reader('threads0', 0), Reader('threads1_scale1/2', 1, 0.5),
           Reader('threads1_scale1/4', 1, 0.25), Reader('threads1_range', 1, range_read=True))


def encodings(short_gop: int) -> list[Encoding]:
    """The original and its re-encoded copies."""
    return [Encoding(ORIGINAL, 0, 1.0), Encoding('h264_source_gop', None, 1.0),
            Encoding(f'h264_gop{short_gop}', short_gop, 1.0), Encoding('h264_intra', 1, 1.0),
            Encoding(f'h264_gop{short_gop}_half', short_gop, 0.5), Encoding('h264_intra_half', 1, 0.5)]


def readers_for(encoding: Encoding) -> tuple[Reader, ...]:
    """Both thread settings everywhere; decoder-side scaling on the originals, range reads on the copies."""
    return READERS[:4] if encoding.name == ORIGINAL else (*READERS[:2], READERS[4])


def cases(clip_len: int, interval: int) -> list[Case]:
    """The base clip, then T0/2 at strides I0, 2*I0 and T0/4 at strides I0, 2*I0, 4*I0."""
    out = [Case(clip_len, interval)]
    for factor in (2, 4):
        if clip_len % factor == 0:
            out += [Case(clip_len // factor, interval * k) for k in (1, 2, 4) if k <= factor]
    return out


def even(x: float) -> int:
    """The nearest even size of at least 2 (yuv420p needs even frame sizes)."""
    return max(2, 2 * round(x / 2))


def video_info(path: Path) -> dict[str, Any]:
    """Codec, size, frame count, frame rate and keyframe positions of a video's first stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        flags = [p.is_keyframe for p in container.demux(stream) if p.size]
        return dict(name=path.name, codec=stream.codec_context.name, width=stream.width,
                    height=stream.height, frames=len(flags),
                    fps=float(stream.average_rate or 0), bytes=path.stat().st_size,
                    keyframes=[i for i, key in enumerate(flags) if key])


def encode(src: Path, dst: Path, gop: int | None, scale: float, crf: int, preset: str) -> None:
    """Re-encode ``src`` with libx264 (yuv420p) at ``scale`` of its frame size.

    ``gop`` None keeps the source's keyframes (and adds none), else one every ``gop`` frames.
    """
    with av.open(str(src)) as inp, av.open(str(dst), 'w') as out:
        source = inp.streams.video[0]
        rate = source.average_rate or Fraction(25)
        width, height = even(source.width * scale), even(source.height * scale)
        stream = out.add_stream('libx264', rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        params = 'keyint=infinite:scenecut=0' if gop is None else f'keyint={gop}:min-keyint={gop}:scenecut=0'
        stream.options = {'crf': str(crf), 'preset': preset, 'x264-params': params}
        for i, frame in enumerate(inp.decode(source)):
            key = frame.key_frame
            frame = frame.reformat(width=width, height=height, format='yuv420p',
                                   interpolation='AREA')
            frame.pts, frame.time_base = i, 1 / Fraction(rate)
            # libx264 makes a frame marked I a keyframe: the source's keyframes for gop None, else none.
            frame.pict_type = PictureType.I if gop is None and key else PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def open_reader(path: Path, reader: Reader, size: tuple[int, int]) -> decord.VideoReader:
    """As ``DecordInit`` does: the file's bytes in ``io.BytesIO``, opened with ``reader``'s threads.

    ``size`` (width, height) is the frame size the decoder scales to when ``reader.scale`` is not 1.
    """
    file_obj = io.BytesIO(path.read_bytes())
    if reader.scale == 1:
        return decord.VideoReader(file_obj, num_threads=reader.num_threads)
    width, height = (max(1, round(s * reader.scale)) for s in size)
    return decord.VideoReader(file_obj, num_threads=reader.num_threads, width=width, height=height)


def frame_inds(total: int, case: Case, starts: int) -> list[np.ndarray]:
    """The clip's indices from ``starts`` starts spread over [0, total - span], wrapped (``SampleFrames``)."""
    span = min(case.clip_len * case.interval, total)
    return [(int(s) + np.arange(case.clip_len) * case.interval) % total
            for s in np.linspace(0, total - span, starts).round()]


def time_clip(path: Path, reader: Reader, size: tuple[int, int],
              inds: np.ndarray) -> tuple[float, float]:
    """Seconds to open the reader and to decode ``inds`` (``DecordDecode``, mode 'accurate')."""
    start = time.perf_counter()
    container = open_reader(path, reader, size)
    opened = time.perf_counter()
    read(container, reader, inds)
    return opened - start, time.perf_counter() - opened


def read(container: decord.VideoReader, reader: Reader, inds: np.ndarray) -> np.ndarray:
    """Frames ``inds`` (T, H, W, 3): ``get_batch(inds)``, or picked from a read of their whole range."""
    if not reader.range_read:
        return container.get_batch(inds).asnumpy()
    first = int(inds.min())
    return container.get_batch(np.arange(first, int(inds.max()) + 1)).asnumpy()[inds - first]


def decode(path: Path, inds: np.ndarray) -> np.ndarray:
    """Frames ``inds`` of ``path`` (T, H, W, 3), read as the loader does."""
    return read(open_reader(path, READERS[0], (0, 0)), READERS[0], inds)


def mean_abs_diff(original: Path, copy: Path, inds: np.ndarray) -> float:
    """Mean absolute difference (0-255) of ``copy``'s frames to the original's, resized to its size."""
    ref, frames = decode(original, inds), decode(copy, inds)
    if ref.shape != frames.shape:
        ref = np.stack([cv2.resize(f, frames.shape[2:0:-1], interpolation=cv2.INTER_AREA) for f in ref])
    return float(np.abs(ref.astype(np.float32) - frames).mean())


def spatial_pipeline(short_side: int, base_crop: int, crop: int) -> Compose:
    """The I3D Kinetics train transforms after decoding, for frames resized to ``short_side``."""
    return Compose([
        dict(type='Resize', scale=(-1, short_side)),
        dict(type='MultiScaleCrop', input_size=base_crop, scales=(1, 0.8), random_crop=False,
             max_wh_scale_gap=0),
        dict(type='Resize', scale=(crop, crop), keep_ratio=False),
        dict(type='Flip', flip_ratio=0.5),
        dict(type='FormatShape', input_format='NCTHW'),
    ])


def time_spatial(pipeline: Compose, frames: np.ndarray) -> float:
    """Seconds to run the spatial transforms on the decoded frames."""
    results = dict(imgs=list(frames), img_shape=frames.shape[1:3], original_shape=frames.shape[1:3],
                   modality='RGB', num_clips=1, clip_len=len(frames))
    start = time.perf_counter()
    pipeline(results)
    return time.perf_counter() - start


def grid_crops(crop: int) -> list[int]:
    """S0/2, S0/sqrt2 and S0, as multigrid rounds them."""
    return [round(crop / 2), round(crop / math.sqrt(2)), crop]


def expected_decode(ms: dict[int, float], low: int, high: int) -> float:
    """Mean cost over strides drawn uniformly from ``low`` .. ``high``, interpolated between the measured."""
    xs = sorted(ms)
    return float(np.mean(np.interp(np.arange(low, high + 1), xs, [ms[x] for x in xs])))


Policy = tuple[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...], float]]
BEST = ('threads1', 'threads1_range')


def policies(short_gop: int) -> dict[str, Policy]:
    """Loading policies: (encoding, readers) at S > S0/2 and (encoding, readers, frame scale) at S0/2.

    With several readers, each stride takes the cheapest (a decode transform choosing its read by stride).
    """
    def same(enc: str, readers: tuple[str, ...] = ('threads1',)) -> Policy:
        return (enc, readers), (enc, readers, 1.0)

    def half(enc: str, readers: tuple[str, ...] = ('threads1',)) -> Policy:
        return (enc, readers), (f'{enc}_half', readers, 0.5)

    gop = f'h264_gop{short_gop}'
    return {
        'original threads1 (today)': same(ORIGINAL),
        'original threads0': same(ORIGINAL, ('threads0',)),
        'original + decord 1/2 at S0/2': ((ORIGINAL, ('threads1',)),
                                          (ORIGINAL, ('threads1_scale1/2',), 0.5)),
        'h264 source GOP': same('h264_source_gop'),
        f'h264 GOP {short_gop}': same(gop),
        f'h264 GOP {short_gop} + half copy at S0/2': half(gop),
        f'h264 GOP {short_gop} + half copy, best read': half(gop, BEST),
        'h264 intra': same('h264_intra'),
        'h264 intra + half copy at S0/2': half('h264_intra'),
        'h264 intra + half copy, best read': half('h264_intra', BEST),
    }


def copy_name(video: Path) -> str:
    """The file name of a video's re-encoded copies (``a.avi`` -> ``a_avi.mp4``: ``a.mp4`` may exist too)."""
    return f'{video.stem}_{video.suffix[1:]}.mp4'


def prepare(videos: Sequence[Path], work_dir: Path, encs: Sequence[Encoding], crf: int,
            preset: str) -> dict[str, dict[str, Path]]:
    """Write the re-encoded copies: ``{encoding: {video name: path}}``."""
    paths: dict[str, dict[str, Path]] = {}
    for enc in encs:
        paths[enc.name] = {}
        for video in videos:
            if enc.name == ORIGINAL:
                paths[enc.name][video.name] = video
                continue
            dst = work_dir / enc.name / copy_name(video)
            dst.parent.mkdir(parents=True, exist_ok=True)
            encode(video, dst, enc.gop, enc.scale, crf, preset)
            paths[enc.name][video.name] = dst
    return paths


def encoding_rows(encs: Sequence[Encoding], paths: dict[str, dict[str, Path]],
                  infos: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per encoding: total and per-video bytes, size relative to the originals, GOP, frame fidelity."""
    original_bytes = sum(i['bytes'] for i in infos.values())
    rows = {}
    for enc in encs:
        per_video = {name: video_info(path) for name, path in paths[enc.name].items()}
        size = sum(v['bytes'] for v in per_video.values())
        frames = sum(v['frames'] for v in per_video.values())
        keys = sum(len(v['keyframes']) for v in per_video.values())
        mad = [mean_abs_diff(paths[ORIGINAL][name], path,
                             np.linspace(0, infos[name]['frames'] - 1, 8).astype(int))
               for name, path in paths[enc.name].items()]
        rows[enc.name] = dict(
            gop=enc.gop, scale=enc.scale, bytes=size, size_rel=size / original_bytes,
            mean_gop=frames / keys, mean_abs_diff=float(np.mean(mad)),
            per_video={name: dict(bytes=v['bytes'], size_rel=v['bytes'] / infos[name]['bytes'],
                                  width=v['width'], height=v['height'], frames=v['frames'],
                                  keyframes=len(v['keyframes']), mean_abs_diff=m)
                       for (name, v), m in zip(per_video.items(), mad)})
        if any(v['frames'] != infos[name]['frames'] for name, v in per_video.items()):
            raise RuntimeError(f'{enc.name}: frame counts differ from the originals')
    return rows


def spatial_keys(clip_len: int, crop: int) -> list[tuple[int, int, float]]:
    """(T, S, frame scale): every grid shape on full-size frames, and S0/2 on half-size ones."""
    lens = [clip_len // f for f in (4, 2, 1) if clip_len % f == 0]
    crops = grid_crops(crop)
    return [(t, s, 1.0) for t in lens for s in crops] + [(t, crops[0], 0.5) for t in lens]


def run(encs: Sequence[Encoding], paths: dict[str, dict[str, Path]], infos: dict[str, dict[str, Any]],
        args: argparse.Namespace) -> tuple[dict, dict]:
    """Time every clip and the spatial transforms, shuffled, ``args.repeats`` times.

    Returns, per (encoding, reader name, case), one ``{video: [(open_s, decode_s) per clip]}`` per
    repeat, and per (T, S, frame scale) one ``{video: [seconds]}`` per repeat.
    """
    sizes = {name: (i['width'], i['height']) for name, i in infos.items()}
    tasks = [('decode', enc.name, reader, case, name, inds)
             for enc in encs for reader in readers_for(enc) for case in cases(args.clip_len,
                                                                                args.frame_interval)
             for name, info in infos.items() for inds in frame_inds(info['frames'], case, args.starts)]
    frames = {(name, scale): resized(decode(path, np.arange(args.clip_len) % infos[name]['frames']), scale)
              for name, path in paths[ORIGINAL].items() for scale in (1.0, 0.5)}
    pipes = {key: spatial_pipeline(round(args.short_side * key[2]), args.crop_size, key[1])
             for key in spatial_keys(args.clip_len, args.crop_size)}
    tasks += [('spatial', key, name) for key in pipes for name in infos]
    for enc in encs:  # warm-up, untimed: the first T0 frames of every video, per encoding and reader
        for reader in readers_for(enc):
            for name, path in paths[enc.name].items():
                time_clip(path, reader, sizes[name], np.arange(args.clip_len) % infos[name]['frames'])
    rng = random.Random(args.seed)
    np.random.seed(args.seed)
    decoded: dict[tuple, list[dict[str, list]]] = {  # keys in table order
        (enc.name, reader.name, case): [] for enc in encs for reader in readers_for(enc)
        for case in cases(args.clip_len, args.frame_interval)}
    spatial: dict[tuple, list[dict[str, list]]] = {key: [] for key in pipes}
    for _ in range(args.repeats):
        rng.shuffle(tasks)
        rep_d: dict[tuple, dict[str, list]] = {}
        rep_s: dict[tuple, dict[str, list]] = {}
        for task in tasks:
            if task[0] == 'decode':
                _, enc, reader, case, name, inds = task
                times = time_clip(paths[enc][name], reader, sizes[name], inds)
                rep_d.setdefault((enc, reader.name, case), {}).setdefault(name, []).append(times)
            else:
                _, key, name = task
                seconds = time_spatial(pipes[key], frames[name, key[2]][:key[0]])
                rep_s.setdefault(key, {}).setdefault(name, []).append(seconds)
        for key, per_video in rep_d.items():
            decoded[key].append(per_video)
        for key, per_video in rep_s.items():
            spatial[key].append(per_video)
    return decoded, spatial


def resized(frames: np.ndarray, scale: float) -> np.ndarray:
    """``frames`` at ``scale`` of their size (the even size of the half-resolution copies)."""
    if scale == 1:
        return frames
    size = (even(frames.shape[2] * scale), even(frames.shape[1] * scale))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def summarise(decoded: dict, spatial: dict) -> tuple[list[dict[str, Any]], dict[tuple, float]]:
    """Per decode case: median over repeats of the mean per clip (ms), and the repeats' spread."""
    rows = []
    for (enc, reader, case), repeats in decoded.items():
        means = [np.mean([sum(t) for clips in per_video.values() for t in clips]) * 1000
                 for per_video in repeats]
        opens = [np.mean([t[0] for clips in per_video.values() for t in clips]) * 1000
                 for per_video in repeats]
        videos = {name: 1000 * statistics.median(np.mean([sum(t) for t in r[name]]) for r in repeats)
                  for name in sorted(repeats[0])}
        rows.append(dict(encoding=enc, reader=reader, clip_len=case.clip_len,
                         frame_interval=case.interval, span=case.clip_len * case.interval,
                         ms=statistics.median(means), min_ms=min(means), max_ms=max(means),
                         open_ms=statistics.median(opens), per_video_ms=videos,
                         per_repeat_ms=[float(m) for m in means]))
    spatial_ms = {key: 1000 * statistics.median(
        float(np.mean([s for v in per_video.values() for s in v])) for per_video in repeats)
        for key, repeats in spatial.items()}
    return rows, spatial_ms


def add_ratios(rows: list[dict[str, Any]], base: Case) -> float:
    """Ratio of each case to the reference (original, threads1, base clip) and to its own base clip."""
    def ms(enc: str, reader: str) -> float:
        return next(r['ms'] for r in rows if (r['encoding'], r['reader'], r['clip_len'],
                                              r['frame_interval']) == (enc, reader, base.clip_len,
                                                                       base.interval))
    reference = ms(ORIGINAL, REFERENCE_READER)
    for r in rows:
        r['ratio'] = r['ms'] / reference
        r['ratio_to_own_base'] = r['ms'] / ms(r['encoding'], r['reader'])
    return reference


def multigrid_rows(rows: list[dict[str, Any]], spatial_ms: dict[tuple, float], args: argparse.Namespace,
                   reference: float) -> list[dict[str, Any]]:
    """Per grid shape (T, S): each policy's expected cost of one clip relative to today's base clip."""
    t0, i0, s0 = args.clip_len, args.frame_interval, args.crop_size
    base_cost = reference + spatial_ms[t0, s0, 1.0]
    out = []
    for t in [t0 // f for f in (4, 2, 1) if t0 % f == 0]:
        low, high = i0, max(i0, i0 * t0 // t)
        for s in grid_crops(s0):
            ideal = (t / t0) * (s / s0) ** 2
            row = dict(clip_len=t, crop_size=s, ideal=ideal, batch_ratio=round(1 / ideal), policies={})
            for name, (full, half) in policies(args.short_gop).items():
                enc, readers, scale = half if s == grid_crops(s0)[0] else (*full, 1.0)
                ms: dict[int, float] = {}
                for r in rows:
                    if (r['encoding'], r['clip_len']) == (enc, t) and r['reader'] in readers:
                        ms[r['frame_interval']] = min(r['ms'], ms.get(r['frame_interval'], math.inf))
                cost = expected_decode(ms, low, high) + spatial_ms[t, s, scale]
                # B/B0 clips per iteration: the loader's time per iteration relative to today's
                rel = cost / base_cost
                row['policies'][name] = dict(ms=cost, rel=rel, per_iteration=row['batch_ratio'] * rel,
                                             encoding=enc, readers=list(readers), frame_scale=scale)
            out.append(row)
    return out


def format_tables(enc_rows: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                  spatial_ms: dict[tuple, float], grid: list[dict[str, Any]]) -> str:
    """Markdown: encodings, decode cost per case, spatial transforms, multigrid cost per shape."""
    lines = ['| encoding | GOP setting | frame scale | mean GOP (frames) | MiB | size rel | '
             'mean abs diff (0-255) |', '|---|---|---|---|---|---|---|']
    for name, e in enc_rows.items():
        gop = 'original' if e['gop'] == 0 else "original's keyframes" if e['gop'] is None else e['gop']
        lines.append(f"| {name} | {gop} | {e['scale']:g} | {e['mean_gop']:.1f} | "
                     f"{e['bytes'] / 2**20:.2f} | {e['size_rel']:.2f} | {e['mean_abs_diff']:.2f} |")
    labels = list(dict.fromkeys(Case(r['clip_len'], r['frame_interval']).label for r in rows))
    lines += ['', 'ms per clip (open + get_batch; median over repeats), ratio to the base clip of '
              f'{ORIGINAL}/{REFERENCE_READER}:', '',
              '| encoding / reader | open ms | ' + ' | '.join(labels) + ' |',
              '|---' * (len(labels) + 2) + '|']
    for enc, reader in dict.fromkeys((r['encoding'], r['reader']) for r in rows):
        mine = {Case(r['clip_len'], r['frame_interval']).label: r for r in rows
                if (r['encoding'], r['reader']) == (enc, reader)}
        lines.append(f'| {enc} / {reader} | {mine[labels[0]]["open_ms"]:.1f} | ' + ' | '.join(
            f"{mine[c]['ms']:.1f} ({mine[c]['ratio']:.2f})" for c in labels) + ' |')
    columns = list(dict.fromkeys((s, f) for _, s, f in spatial_ms))
    lines += ['', '| spatial transforms, ms per clip | ' + ' | '.join(
        f'S={s}' + (f' (frames x{f:g})' if f != 1 else '') for s, f in columns) + ' |',
        '|---' * (len(columns) + 1) + '|']
    for t in dict.fromkeys(t for t, _, _ in spatial_ms):
        lines.append(f'| T={t} | ' + ' | '.join(f'{spatial_ms[t, s, f]:.2f}' for s, f in columns) + ' |')
    names = list(grid[0]['policies'])
    lines += ['', 'cost of one clip (open + decode at the stride distribution + spatial) relative to '
              "today's base clip:", '', '| T, S | ideal (T/T0)(S/S0)^2 | ' + ' | '.join(names) + ' |',
              '|---' * (len(names) + 2) + '|']
    for g in grid:
        lines.append(f"| {g['clip_len']}, {g['crop_size']} | {g['ideal']:.3f} | " + ' | '.join(
            f"{g['policies'][n]['rel']:.3f}" for n in names) + ' |')
    lines += ['', 'loader time per iteration (B/B0 clips) relative to the base iteration today:',
              '', '| T, S | B/B0 | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 2) + '|']
    for g in grid:
        lines.append(f"| {g['clip_len']}, {g['crop_size']} | {g['batch_ratio']} | " + ' | '.join(
            f"{g['policies'][n]['per_iteration']:.2f}" for n in names) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--videos', type=Path, default=ROOT.parent / 'shared' / 'videos')
    parser.add_argument('--clip-len', type=int, default=32, help='T0 of the base clip')
    parser.add_argument('--frame-interval', type=int, default=2, help='I0 of the base clip')
    parser.add_argument('--crop-size', type=int, default=224, help='S0')
    parser.add_argument('--short-side', type=int, default=256, help='Resize(-1, short side) of full frames')
    parser.add_argument('--starts', type=int, default=6, help='clip starts per video and case')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--short-gop', type=int, default=8)
    parser.add_argument('--crf', type=int, default=20)
    parser.add_argument('--preset', default='fast')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', type=Path, help='where the re-encoded copies go (default: a '
                        'temporary folder, removed afterwards)')
    parser.add_argument('--out', type=Path, help='write the results as JSON here')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.starts < 1 or args.clip_len < 1 or args.frame_interval < 1:
        parser.error('--repeats, --starts, --clip-len and --frame-interval must be >= 1')
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    init_default_scope('mmaction')
    videos = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise SystemExit(f'no videos ({", ".join(VIDEO_SUFFIXES)}) in {args.videos}')
    infos = {v.name: video_info(v) for v in videos}
    encs = encodings(args.short_gop)
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        start = time.perf_counter()
        paths = prepare(videos, work_dir, encs, args.crf, args.preset)
        encode_s = time.perf_counter() - start
        enc_rows = encoding_rows(encs, paths, infos)
        start = time.perf_counter()
        decoded, spatial = run(encs, paths, infos, args)
        timing_s = time.perf_counter() - start
    rows, spatial_ms = summarise(decoded, spatial)
    reference = add_ratios(rows, Case(args.clip_len, args.frame_interval))
    grid = multigrid_rows(rows, spatial_ms, args, reference)
    tables = format_tables(enc_rows, rows, spatial_ms, grid)
    print(f'{len(videos)} videos, {args.starts} starts x {args.repeats} repeats per case; '
          f'encoding {encode_s:.0f} s, timing {timing_s:.0f} s')
    print(tables)
    result = dict(
        args={k: str(v) for k, v in vars(args).items()}, machine=machine(),
        reference=dict(encoding=ORIGINAL, reader=REFERENCE_READER, clip_len=args.clip_len,
                       frame_interval=args.frame_interval, ms=reference),
        videos=list(infos.values()), readers=[dataclasses.asdict(r) for r in READERS],
        encodings=enc_rows, decode=rows,
        spatial=[dict(clip_len=t, crop_size=s, frame_scale=f, ms=v) for (t, s, f), v in spatial_ms.items()],
        multigrid=grid, seconds=dict(encode=encode_s, timing=timing_s))
    write_result(args.out, result)
    return result


if __name__ == '__main__':
    main()
