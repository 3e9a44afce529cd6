"""Data-loader throughput per multigrid grid shape, against the baseline shape.

Multigrid keeps B*T*S^2 about constant, so an iteration at a grid shape costs the model about what a
baseline iteration costs, but the loader must then deliver ``B / B0`` times the baseline's clips per
second (8x-16x for the reference long + short cycle). For every distinct grid shape of a plan, this
script runs a torch ``DataLoader`` with ``MultigridSampler`` forced to that shape (a one-shape plan,
persistent workers, as in training) over the same number of clips, and reports clips/s, frames/s,
the ratio to the baseline shape and the *headroom*: that ratio over the needed ``B / B0`` (below 1:
a loader that just keeps up with the baseline becomes the bottleneck at that shape) and
``cost_vs_base``: the loader's seconds per batch at that shape over its seconds per batch at the base
shape (same workers; 1 is the ideal, as for the model). Batches are collated as in training
(``StackingCollate`` around ``pseudo_collate``; ``--plain-collate``: ``pseudo_collate`` alone). It then
times each transform of one sample per shape, to show where the time goes.

``--format rawframes`` measures the same clips as rawframes: the frames are extracted once (with the
smaller copies the plan's grid shapes need, ``mmmultigrid.data.rawframes``) into ``--frames-dir``, and the
pipeline reads them with ``ScaledRawFrameDecode`` in place of ``DecordInit`` + ``DecordDecode``.

Two setups:

* default: the synthetic dataset (made with ``mmmultigrid.data.synthetic_videos.make_dataset`` under
  ``--data-root``), the train pipeline of ``configs/synthetic_r3d_baseline.py`` and the plan that
  ``plan_from_config`` makes from ``configs/synthetic_r3d_multigrid.py`` (1 process);
* ``--videos DIR``: every clip in DIR at its real resolution (annotation written to a temporary
  folder), mmaction2's I3D Kinetics train pipeline at 224 (T=32, I=2) and the reference Kinetics plan
  (B=8 per GPU on 8 GPUs, MultiStepLR [94, 154, 196], 239 epochs, long + short cycle).

Usage::

    python benchmarks/loader_throughput.py --out work_dirs/loader_synthetic.json
    python benchmarks/loader_throughput.py --videos ../shared/videos --out work_dirs/loader_real.json
    python benchmarks/loader_throughput.py --videos ../shared/videos --format rawframes
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.utils.dl_utils import set_multi_processing
from torch.utils.data import DataLoader

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmaction.datasets import RawframeDataset, VideoDataset
from mmaction.registry import TRANSFORMS
from mmmultigrid.baseline import plan_from_config
from mmmultigrid.data.collate import StackingCollate
from mmmultigrid.lr_curve import parse_lr_schedulers
from mmmultigrid.data.pipeline import ShapeVaryingPipeline, transform_name
from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, Segment, build_plan
from mmmultigrid.data.rawframes import copies_for_plan, extract_dataset
from mmmultigrid.data.sampler import GridIndex, MultigridSampler
from mmmultigrid.data.synthetic_videos import make_dataset

ROOT = Path(__file__).resolve().parents[1]
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.webm', '.mov')
#: mmaction2's I3D Kinetics-400 train pipeline (i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e).
I3D_KINETICS_TRAIN = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=32, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='MultiScaleCrop', input_size=224, scales=(1, 0.8), random_crop=False,
         max_wh_scale_gap=0),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]


@dataclasses.dataclass
class Setup:
    """What to load: the clips (relative to ``video_dir``, or frame folders in ``frames_root`` with
    their frame counts), the user's transforms and the plan."""

    name: str
    video_dir: Path
    files: list[str]
    transforms: list[dict]
    plan: MultigridPlan
    frames_root: Path | None = None
    total_frames: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def format(self) -> str:
        return 'video' if self.frames_root is None else 'rawframes'

    def results(self, name: str) -> dict[str, Any]:
        """The dataset's ``results`` of clip ``name`` before the pipeline."""
        if self.frames_root is None:
            return dict(filename=str(self.video_dir / name), label=0, start_index=0, modality='RGB')
        return dict(frame_dir=str(self.frames_root / name), total_frames=self.total_frames[name],
                    label=0, start_index=1, modality='RGB', filename_tmpl='img_{:05}.jpg')

    def dataset(self, ann: Path, length: int) -> VideoDataset | RawframeDataset:
        """The dataset of ``length`` clips cycling through ``files``, wrapped for multigrid."""
        names = [self.files[i % len(self.files)] for i in range(length)]
        pipeline = [dict(type='ShapeVaryingPipeline', transforms=self.transforms)]
        if self.frames_root is None:
            ann.write_text(''.join(f'{name} 0\n' for name in names))
            return VideoDataset(str(ann), pipeline, data_prefix=dict(video=str(self.video_dir)))
        ann.write_text(''.join(f'{name} {self.total_frames[name]} 0\n' for name in names))
        return RawframeDataset(str(ann), pipeline, data_prefix=dict(img=str(self.frames_root)))


def as_rawframes(setup: Setup, frames_dir: Path) -> Setup:
    """``setup`` reading frames extracted from its videos (once, with the copies its plan needs)
    through ``ScaledRawFrameDecode`` in place of ``DecordInit`` + ``DecordDecode``."""
    copies = copies_for_plan(setup.transforms, setup.plan)
    links = frames_dir / 'videos'  # unique frame folder names (test.mp4 and test.avi: test_mp4, ...)
    links.mkdir(parents=True, exist_ok=True)
    names = {name: name.replace('.', '_') + Path(name).suffix for name in sorted(set(setup.files))}
    for name, link in names.items():
        (links / link).unlink(missing_ok=True)
        (links / link).parent.mkdir(parents=True, exist_ok=True)
        (links / link).symlink_to((setup.video_dir / name).resolve())
    (frames_dir / 'videos.txt').write_text(''.join(f'{link} 0\n' for link in names.values()))
    extracted = extract_dataset(frames_dir / 'videos.txt', links, frames_dir,
                                frames_dir / 'rawframes.txt', copies, workers=2, reuse=True)
    if extracted.failures:
        raise SystemExit(f'cannot extract frames: {extracted.failures}')
    total = {line.split()[0]: int(line.split()[1])
             for line in extracted.ann_file.read_text().splitlines()}
    transforms = [dict(type='ScaledRawFrameDecode', copies=copies) if transform_name(t) ==
                  'DecordDecode' else t for t in setup.transforms if transform_name(t) != 'DecordInit']
    return dataclasses.replace(setup, name=f'{setup.name}_rawframes', transforms=transforms,
                               files=[os.path.splitext(names[f])[0] for f in setup.files],
                               frames_root=frames_dir, total_frames=total)


def synthetic_setup(data_root: Path) -> Setup:
    dataset = make_dataset(data_root)
    files = [line.split()[0] for line in dataset.train_ann.read_text().splitlines() if line]
    baseline = Config.fromfile(str(ROOT / 'configs/synthetic_r3d_baseline.py'))
    plan = plan_from_config(Config.fromfile(str(ROOT / 'configs/synthetic_r3d_multigrid.py')), 1)
    return Setup('synthetic', dataset.video_dir, files, list(baseline.train_pipeline), plan)


def kinetics_setup(video_dir: Path, batch_size: int = 8) -> Setup:
    files = sorted(p.name for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise SystemExit(f'no videos ({", ".join(VIDEO_SUFFIXES)}) in {video_dir}')
    curve = parse_lr_schedulers(dict(type='MultiStepLR', milestones=[94, 154, 196], gamma=0.1),
                                239, 0.1)
    plan = build_plan(BaseShape(batch_size, 32, 2, 224), MultigridOptions(), curve, 239, world_size=8)
    return Setup('i3d_kinetics_real_clips', video_dir, files, list(I3D_KINETICS_TRAIN), plan)


def grid_shapes(plan: MultigridPlan) -> list[GridShape]:
    """The distinct grid shapes of the plan, cheapest clips first."""
    return sorted({g for s in plan.segments for g in s.shapes},
                  key=lambda g: (g.clip_len * g.crop_size**2, g.batch_size))


def one_shape_plan(plan: MultigridPlan, shape: GridShape) -> MultigridPlan:
    """A one-epoch plan whose every batch has ``shape``."""
    segment = Segment(0, 1, 0, shape, 1.0, (shape,), shape.batch_size // plan.base.batch_size)
    return dataclasses.replace(plan, max_epochs=1, segments=(segment,))


def measure(loader: DataLoader, sampler: MultigridSampler, plan: MultigridPlan, shape: GridShape,
            base: GridShape) -> dict[str, Any]:
    """One epoch of the loader at ``shape``: every clip of the dataset, in full batches."""
    sampler.set_plan(one_shape_plan(plan, shape))
    start = time.perf_counter()
    batches = clips = 0
    for batch in loader:
        assert len(batch['inputs']) == shape.batch_size
        assert tuple(batch['inputs'][0].shape[-3:]) == (shape.clip_len, shape.crop_size,
                                                         shape.crop_size)
        batches += 1
        clips += len(batch['inputs'])
    seconds = time.perf_counter() - start
    return dict(batch_size=shape.batch_size, clip_len=shape.clip_len, crop_size=shape.crop_size,
                batches=batches, clips=clips, seconds=seconds, seconds_per_batch=seconds / batches,
                clips_per_s=clips / seconds,
                frames_per_s=clips * shape.clip_len / seconds,
                needed_ratio=shape.batch_size / base.batch_size, is_baseline=shape == base)


def in_process_rate(dataset: VideoDataset | RawframeDataset, shape: GridShape, count: int) -> float:
    """Clips/s of ``dataset[i]`` in this process: what one worker could do without IPC."""
    start = time.perf_counter()
    for i in range(count):
        dataset[GridIndex(i, shape)]
    return count / (time.perf_counter() - start)


def profile(setup: Setup, shapes: Sequence[GridShape], repeats: int) -> dict[str, dict[str, float]]:
    """Mean milliseconds per transform of one sample, per shape, over the distinct clips."""
    pipeline = ShapeVaryingPipeline(setup.transforms)
    files = sorted(set(setup.files))[:4]
    out = {}
    for shape in shapes:
        totals: dict[str, float] = {}
        low, high = pipeline.frame_intervals(shape.clip_len)
        runs = 0
        for name in files:
            for _ in range(repeats):
                interval = int(np.random.randint(low, high + 1))
                results = setup.results(name)
                for i, transform in enumerate(
                        pipeline.pipeline(shape.clip_len, interval, shape.crop_size).transforms):
                    start = time.perf_counter()
                    results = transform(results)
                    key = f'{i}:{type(transform).__name__}'
                    totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
                runs += 1
        out[shape_label(shape)] = {k: 1000 * v / runs for k, v in totals.items()}
    return out


def decode_vs_span(setup: Setup, min_clip_len: int, repeats: int) -> dict[str, float]:
    """Mean DecordDecode milliseconds per clip for the base clip, a short clip at the base stride and a
    short clip at the largest stride (the base clip's time span), from starts spread over each video."""
    base = ShapeVaryingPipeline(setup.transforms).base
    wide = base.frame_interval * base.clip_len // min_clip_len
    cases = {(base.clip_len, base.frame_interval), (min_clip_len, base.frame_interval),
             (min_clip_len, wide)}
    init, decode = TRANSFORMS.build(dict(type='DecordInit')), TRANSFORMS.build(
        dict(type='DecordDecode'))
    out = {}
    for clip_len, interval in sorted(cases, reverse=True):
        times = []
        for name in sorted(set(setup.files))[:4]:
            results = init(dict(filename=str(setup.video_dir / name)))
            span = min(clip_len * interval, results['total_frames'])
            for start in np.linspace(0, results['total_frames'] - span, repeats).astype(int):
                results['frame_inds'] = (start + np.arange(clip_len) * interval) % results[
                    'total_frames']
                begin = time.perf_counter()
                decode(dict(results))
                times.append(time.perf_counter() - begin)
        out[f'T={clip_len} stride={interval} span={clip_len * interval}'] = 1000 * float(
            np.mean(times))
    return out


def shape_label(shape: GridShape) -> str:
    return f'B={shape.batch_size} T={shape.clip_len} S={shape.crop_size}'


def machine() -> dict[str, Any]:
    model = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text()
                  .splitlines() if line.startswith('model name')), platform.processor())
    return dict(nproc=os.cpu_count(), cpu=model, load_avg=os.getloadavg(),
                date=time.strftime('%Y-%m-%d %H:%M:%S %Z'))


def format_tables(rows: list[dict[str, Any]], prof: dict[str, dict[str, float]]) -> str:
    lines = ['| shape (B, T, S) | clips | clips/s | frames/s | ratio to base | needed | headroom '
             '| s per batch | cost vs base | 1 process, no workers: clips/s |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        mark = ' (base)' if r['is_baseline'] else ''
        lines.append(f"| {r['batch_size']}, {r['clip_len']}, {r['crop_size']}{mark} | {r['clips']} | "
                     f"{r['clips_per_s']:.1f} | {r['frames_per_s']:.0f} | {r['ratio']:.2f}x | "
                     f"{r['needed_ratio']:.0f}x | {r['headroom']:.2f} | "
                     f"{r['seconds_per_batch']:.3f} | {r['cost_vs_base']:.2f} | "
                     f"{r['in_process_clips_per_s']:.1f} |")
    steps = list(next(iter(prof.values())))
    lines += ['', '| ms per sample | ' + ' | '.join(steps) + ' | total |',
              '|---' * (len(steps) + 2) + '|']
    for label, times in prof.items():
        lines.append(f'| {label} | ' + ' | '.join(f'{times[s]:.1f}' for s in steps) +
                     f' | {sum(times.values()):.1f} |')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-workers', type=int, default=2)
    parser.add_argument('--data-root', type=Path, default=ROOT / 'data/synthetic',
                        help='synthetic dataset folder (generated if missing)')
    parser.add_argument('--videos', type=Path, help='measure these real clips with the I3D '
                        'Kinetics pipeline and the reference Kinetics plan instead')
    parser.add_argument('--base-batch', type=int, default=8,
                        help='with --videos: base batch per GPU of the Kinetics plan (reference: 8)')
    parser.add_argument('--format', choices=('video', 'rawframes'), default='video',
                        help='load the videos, or frames extracted from them (with smaller copies)')
    parser.add_argument('--plain-collate', action='store_true',
                        help="mmengine's pseudo_collate alone (training wraps it in StackingCollate)")
    parser.add_argument('--frames-dir', type=Path,
                        help='where the rawframes are extracted (default: work_dirs/loader_frames/'
                        '<setup>; kept and reused)')
    parser.add_argument('--clips', type=int, default=256,
                        help='clips per shape (rounded up to a multiple of largest batch x workers)')
    parser.add_argument('--warmup', type=int, default=2, help='baseline batches before timing')
    parser.add_argument('--in-process-clips', type=int, default=16,
                        help='clips per shape loaded in the main process (no workers, no IPC)')
    parser.add_argument('--profile-repeats', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, help='write the results as JSON here')
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error('--num-workers must be >= 1 (persistent workers, as in training)')

    init_default_scope('mmaction')
    set_multi_processing('fork', opencv_num_threads=0)  # the Runner's env_cfg.mp_cfg defaults
    np.random.seed(args.seed)
    setup = (kinetics_setup(args.videos, args.base_batch) if args.videos else
             synthetic_setup(args.data_root))
    if args.format == 'rawframes':
        setup = as_rawframes(setup, args.frames_dir or ROOT / 'work_dirs' / 'loader_frames' /
                             setup.name)
    plan, shapes = setup.plan, grid_shapes(setup.plan)
    b = plan.base
    base = GridShape(b.batch_size, b.clip_len, b.crop_size)
    # Whole batches for every worker at every shape: a DataLoader gives each batch to one worker.
    unit = max(s.batch_size for s in shapes) * args.num_workers
    length = unit * math.ceil(args.clips / unit)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = setup.dataset(Path(tmp) / 'train_list.txt', length)
        sampler = MultigridSampler(DefaultSampler(dataset, shuffle=True, seed=args.seed),
                                   b.batch_size)
        collate = pseudo_collate if args.plain_collate else StackingCollate(pseudo_collate)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                            persistent_workers=True, collate_fn=collate)
        sampler.set_plan(one_shape_plan(plan, base))
        for i, _ in enumerate(loader):  # start the workers, open the files once
            if i + 1 >= args.warmup:
                break
        rows = [measure(loader, sampler, plan, shape, base) for shape in shapes]
        del loader
        for row, shape in zip(rows, shapes):
            row['in_process_clips_per_s'] = in_process_rate(dataset, shape, args.in_process_clips)
    base_row = next(r for r in rows if r['is_baseline'])
    for r in rows:
        r['ratio'] = r['clips_per_s'] / base_row['clips_per_s']
        r['headroom'] = r['ratio'] / r['needed_ratio']
        r['cost_vs_base'] = r['seconds_per_batch'] / base_row['seconds_per_batch']
    prof = profile(setup, shapes, args.profile_repeats)
    spans = (decode_vs_span(setup, min(s.clip_len for s in shapes), 3)
             if setup.format == 'video' else {})
    tables = format_tables(rows, prof) + ''.join(
        ['\n\nDecordDecode ms per clip:'] * bool(spans) +
        [f'\n- {case}: {ms:.1f}' for case, ms in spans.items()])
    print(f'{setup.name}: {len(set(setup.files))} clips ({setup.format}), {length} clips per shape, '
          f'{args.num_workers} workers; worst cost vs base '
          f"{max(r['cost_vs_base'] for r in rows):.2f}")
    print(tables)
    result = dict(setup=setup.name, format=setup.format,
                  args={k: str(v) for k, v in vars(args).items()},
                  machine=machine(), clips_per_shape=length, base_shape=dataclasses.asdict(base),
                  shapes=rows, profile_ms=prof, decode_vs_span_ms=spans, transforms=[transform_name(t)
                                                            for t in setup.transforms])
    write_result(args.out, result)
    return result


def write_result(out: Path | None, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON to ``out`` (its folder made), if given, and say so."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + '\n')
        print(f'wrote {out}')


if __name__ == '__main__':
    main()
