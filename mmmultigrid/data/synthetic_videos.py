"""Deterministic synthetic video-classification dataset (numpy + cv2 only, no torch).

Each clip shows one large *target* shape moving in a straight line (with wrap-around at the frame
border) over a random low-frequency textured background, plus 1-2 smaller distractor shapes moving
in random directions, and per-frame pixel noise. The label is the pair (target shape, direction):

* labels ``0..7``: shapes disc, square, triangle, cross x directions right, left
  (label ``2 * s + d``);
* labels ``8..15``: the same shapes x directions down, up.

Colours, start position, size, orientation and speed are random per clip and independent of the
label, so colour is useless. Because motion wraps around, the target's position in any single frame
is uniform whatever the direction: labels ``2k`` and ``2k + 1`` have exactly the same per-frame
appearance distribution, and only motion separates them.

Annotation files use mmaction2's ``VideoDataset`` format (``relative/path.mp4 LABEL``), relative to
``SyntheticDataset.video_dir`` (use ``data_prefix=dict(video=str(ds.video_dir))``).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GENERATOR_VERSION = 3
SHAPES = ('disc', 'square', 'triangle', 'cross')
DIRECTIONS = {'right': (1.0, 0.0), 'left': (-1.0, 0.0), 'down': (0.0, 1.0), 'up': (0.0, -1.0)}
MAX_CLASSES = 16
FOURCC = 'mp4v'
_SPLITS = ('train', 'val')
_SUBPIXEL_BITS = 4  # cv2 drawing `shift`: coordinates are in 1/16 pixel


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a generated dataset."""

    root: Path
    video_dir: Path
    train_ann: Path
    val_ann: Path
    num_classes: int


def class_names(num_classes: int) -> list[str]:
    """Human-readable names ``'<shape>_<direction>'`` of labels ``0..num_classes-1``."""
    return ['{}_{}'.format(*_class_spec(label)) for label in range(num_classes)]


def _class_spec(label: int) -> tuple[str, str]:
    """(shape, direction) of a label; see the module docstring for the layout."""
    directions = ('right', 'left') if label < 8 else ('down', 'up')
    return SHAPES[(label % 8) // 2], directions[label % 2]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _validate(num_classes: int, train_clips_per_class: int, val_clips_per_class: int,
              num_frames: int, width: int, height: int, fps: float, seed: int) -> None:
    _check_int('num_classes', num_classes, 2)
    if num_classes > MAX_CLASSES:
        raise ValueError(f'num_classes must be <= {MAX_CLASSES}, got {num_classes!r}')
    _check_int('train_clips_per_class', train_clips_per_class, 1)
    _check_int('val_clips_per_class', val_clips_per_class, 1)
    _check_int('num_frames', num_frames, 2)
    for name, value in (('width', width), ('height', height)):
        _check_int(name, value, 32)
        if value % 2:
            raise ValueError(f'{name} must be even (video codec requirement), got {value!r}')
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise ValueError(f'fps must be a number in (0, 1000], got {fps!r}')
    _check_int('seed', seed, 0)


def _shape_polygon(kind: str, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred on the origin, rotated by `angle` radians."""
    if kind == 'disc':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif kind == 'square':
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.85
    elif kind == 'triangle':
        t = -np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * 1.15
    elif kind == 'cross':
        a, b = 1.0, 0.33
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                        [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    else:
        raise ValueError(f'unknown shape {kind!r}')
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T * radius


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, bright BGR colour (stands out from the muted background)."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(180, 256)]]],
                   dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted low-frequency colour texture (uint8, H x W x 3)."""
    coarse = rng.uniform(40, 100, size=(rng.integers(3, 8), rng.integers(3, 8), 3))
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 5, size=(height, width, 3))
    return np.clip(smooth + fine, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Sprite:
    polygon: np.ndarray  # (N, 2) vertices around the origin
    colour: tuple[int, int, int]
    start: np.ndarray  # (2,) x, y at frame 0
    velocity: np.ndarray  # (2,) pixels per frame

    def draw(self, frame: np.ndarray, t: int) -> None:
        """Draw at its frame-`t` position, wrapping around the frame borders (torus)."""
        height, width = frame.shape[:2]
        x, y = (self.start + t * self.velocity) % (width, height)
        scale = 1 << _SUBPIXEL_BITS
        for dx in (0, -width) if x > width / 2 else (0, width):
            for dy in (0, -height) if y > height / 2 else (0, height):
                pts = np.round((self.polygon + (x + dx, y + dy)) * scale).astype(np.int32)
                cv2.fillPoly(frame, [pts], self.colour, cv2.LINE_AA, _SUBPIXEL_BITS)


def _render_clip(rng: np.random.Generator, label: int, num_frames: int, width: int,
                 height: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 BGR of one clip of class `label`."""
    shape, direction = _class_spec(label)
    size = min(width, height)
    frame_size = np.array([width, height], dtype=float)
    # Travel 50-80% of the frame extent over the clip, whatever its length.
    speed = rng.uniform(0.5, 0.8) * frame_size / num_frames
    target = _Sprite(
        polygon=_shape_polygon(shape, size * rng.uniform(0.2, 0.26), rng.uniform(-0.3, 0.3)),
        colour=_random_colour(rng),
        start=rng.uniform(0, 1, 2) * frame_size,
        velocity=np.array(DIRECTIONS[direction]) * speed,
    )
    distractors = []
    for _ in range(rng.integers(1, 3)):
        heading = rng.uniform(0, 2 * np.pi)
        distractors.append(_Sprite(
            polygon=_shape_polygon(SHAPES[rng.integers(len(SHAPES))],
                                   size * rng.uniform(0.05, 0.08), rng.uniform(0, 2 * np.pi)),
            colour=_random_colour(rng),
            start=rng.uniform(0, 1, 2) * frame_size,
            velocity=np.array([math.cos(heading), math.sin(heading)]) * rng.uniform(0.2, 0.5)
            * speed.max(),
        ))
    background = _background(rng, width, height)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for sprite in (*distractors, target):
            sprite.draw(frame, t)
        frames[t] = frame
    noise = rng.integers(-6, 7, size=frames.shape, dtype=np.int16)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*FOURCC), float(fps),
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'cv2.VideoWriter cannot open {path} with fourcc {FOURCC!r}')
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _paths(out_dir: Path, num_classes: int) -> SyntheticDataset:
    return SyntheticDataset(root=out_dir, video_dir=out_dir / 'videos',
                            train_ann=out_dir / 'train_list.txt',
                            val_ann=out_dir / 'val_list.txt', num_classes=num_classes)


def make_dataset(out_dir: str | Path, num_classes: int = 8, train_clips_per_class: int = 40,
                 val_clips_per_class: int = 10, num_frames: int = 48, width: int = 128,
                 height: int = 96, fps: float = 24, seed: int = 0,
                 overwrite: bool = False) -> SyntheticDataset:
    """Generate the dataset under `out_dir` (or reuse it) and return its paths.

    Same arguments give byte-identical annotation files and identical decoded frames. If
    `out_dir/meta.json` records the same parameters and `overwrite` is False, nothing is written.
    If it records different parameters, FileExistsError is raised unless `overwrite` is True.
    Generation replaces `videos/train`, `videos/val` and the annotation files; ``meta.json`` is
    written last, so an interrupted run is regenerated next time.
    """
    _validate(num_classes, train_clips_per_class, val_clips_per_class, num_frames, width, height,
              fps, seed)
    out_dir = Path(out_dir)
    dataset = _paths(out_dir, num_classes)
    params = dict(generator_version=GENERATOR_VERSION, num_classes=int(num_classes),
                  train_clips_per_class=int(train_clips_per_class),
                  val_clips_per_class=int(val_clips_per_class), num_frames=int(num_frames),
                  width=int(width), height=int(height), fps=float(fps), seed=int(seed))
    meta_path = out_dir / 'meta.json'
    if meta_path.is_file() and not overwrite:
        if json.loads(meta_path.read_text()) == params:
            return dataset
        raise FileExistsError(f'{out_dir} holds a synthetic dataset with other parameters '
                              f'(see {meta_path}); pass overwrite=True (--overwrite) to '
                              'regenerate it')

    meta_path.unlink(missing_ok=True)
    clips_per_class = dict(train=train_clips_per_class, val=val_clips_per_class)
    annotations = dict(train=dataset.train_ann, val=dataset.val_ann)
    for split_index, split in enumerate(_SPLITS):
        split_dir = dataset.video_dir / split
        shutil.rmtree(split_dir, ignore_errors=True)
        split_dir.mkdir(parents=True)
        lines = []
        for index in range(clips_per_class[split] * num_classes):
            label = index % num_classes
            rng = np.random.default_rng([seed, split_index, index])
            relative = f'{split}/{split}_{index:05d}.mp4'
            _write_video(dataset.video_dir / relative,
                         _render_clip(rng, label, num_frames, width, height), fps)
            lines.append(f'{relative} {label}\n')
        annotations[split].write_text(''.join(lines))
    meta_path.write_text(json.dumps(params, indent=2) + '\n')
    return dataset


def main(argv: Sequence[str] | None = None) -> SyntheticDataset:
    """Command-line entry point: generate a dataset and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, type=Path, help='output directory')
    parser.add_argument('--num-classes', type=int, default=8, help=f'2..{MAX_CLASSES}')
    parser.add_argument('--train-clips-per-class', type=int, default=40)
    parser.add_argument('--val-clips-per-class', type=int, default=10)
    parser.add_argument('--frames', type=int, default=48, help='frames per clip')
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--height', type=int, default=96)
    parser.add_argument('--fps', type=float, default=24)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if the dataset already exists')
    args = parser.parse_args(argv)
    try:
        dataset = make_dataset(args.out, num_classes=args.num_classes,
                               train_clips_per_class=args.train_clips_per_class,
                               val_clips_per_class=args.val_clips_per_class,
                               num_frames=args.frames, width=args.width, height=args.height,
                               fps=args.fps, seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    num_train = len(dataset.train_ann.read_text().splitlines())
    num_val = len(dataset.val_ann.read_text().splitlines())
    names = ', '.join(class_names(dataset.num_classes))
    print(f'synthetic dataset: {dataset.num_classes} classes ({names})\n'
          f'  videos:    {dataset.video_dir} ({num_train} train, {num_val} val clips, '
          f'{args.frames} frames of {args.width}x{args.height} at {args.fps:g} fps)\n'
          f'  train ann: {dataset.train_ann}\n'
          f'  val ann:   {dataset.val_ann}')
    return dataset


if __name__ == '__main__':
    main()
