"""Side-by-side speed-up benchmark: the same recipe trained twice in one invocation.

The baseline trains at the fixed base shape; multigrid adds only the multigrid lines (long + short cycle,
default options, epoch_factor 1.5). Both run ``tools/train.py`` as a user would, one after the other, on
the built-in synthetic dataset or on any mmaction2 ``VideoDataset``.

Wall-clock is the training time: the sum of mmengine's per-iteration ``time`` (data loading included,
validation and checkpointing excluded; both runs validate at the same fractions of training). The script
writes ``--out`` JSON, a PNG of validation accuracy against wall-clock with each run's data-wait share per
grid shape, and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mmmultigrid  # noqa: E402,F401  (repairs the OpenMMLab stack before mmengine configs load)
from mmengine.config import Config  # noqa: E402

from mmmultigrid.baseline import plan_from_config  # noqa: E402
from mmmultigrid.data.rawframes import copies_for_config, extract_dataset  # noqa: E402
from mmmultigrid.report import format_plan  # noqa: E402
from mmmultigrid.data.synthetic_videos import make_dataset  # noqa: E402
from mmmultigrid.engine.run_scalars import latest_scalars, resumed_scalars  # noqa: E402

CONFIGS = {'baseline': REPO / 'configs' / 'synthetic_r3d_baseline.py',
           'multigrid': REPO / 'configs' / 'synthetic_r3d_multigrid.py'}
VALIDATIONS = 4  # per run, at the same fractions of training
#: In a run's work dir: the config ``train`` started it with and the ``<timestamp>`` log folders that were
#: there before (another run's).
RUN_START = 'run_start.json'

#: Dataset, model and schedule of each preset. ``threads`` torch threads train while ``workers``
#: loader processes decode, so on 2 cores loading overlaps compute as it does on a GPU machine.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's regime at CPU size (issue 11): the backbone's total stride of 16 keeps its last feature
    # map at 5x5 at the base crop and 3x3 at the coarsest grid shape (the paper: 7x7 and about 3.5);
    # 1,024 validation clips. About 10 minutes on 2 cores; benchmarks/budget_sweep.py scales it 1-16x.
    # LR 0.01: the best of 0.01, 0.02 and 0.04 for the baseline at 2x (issue 18; 0.02 until 2026-12-02).
    'default': dict(
        dataset=dict(num_classes=16, train_clips_per_class=64, val_clips_per_class=64, num_frames=48,
                     width=128, height=96, seed=0),
        model=dict(base_channels=8, depth=18, pool1_stride_s=1),
        pipeline=dict(clip_len=16, frame_interval=2, short_side=90, crop_size=80),
        schedule=dict(max_epochs=6, milestones=[4, 5], warmup_epochs=1, lr=0.01, batch_size=4),
        threads=1, workers=2),
    # `make demo`: the same model and shapes on 8 classes and less data, a few minutes.
    'demo': dict(
        dataset=dict(num_classes=8, train_clips_per_class=48, val_clips_per_class=16, num_frames=48,
                     width=128, height=96, seed=0),
        model=dict(base_channels=8, depth=18, pool1_stride_s=1),
        pipeline=dict(clip_len=16, frame_interval=2, short_side=90, crop_size=80),
        schedule=dict(max_epochs=6, milestones=[4, 5], warmup_epochs=1, lr=0.02, batch_size=4),
        threads=1, workers=2),
    # Decoding dominates: a tiny model at 64 px trains a clip in about the time it takes to decode
    # (total stride 16: 4x4 at the base crop, 2x2 at the coarsest).
    'loader-heavy': dict(
        dataset=dict(num_classes=8, train_clips_per_class=128, val_clips_per_class=64, num_frames=48,
                     width=128, height=96, seed=0),
        model=dict(base_channels=4, depth=18, pool1_stride_s=1),
        pipeline=dict(clip_len=16, frame_interval=2, short_side=80, crop_size=64),
        schedule=dict(max_epochs=12, milestones=[8, 11], warmup_epochs=1, lr=0.02, batch_size=8),
        threads=1, workers=1),
    # A 2D recognizer (issue 19): ResNet-18 TSM, 8 segments folded into the batch, at 48 px with total
    # stride 16 (3x3 at the base crop, 2x2 at the coarsest); an iteration costs about one of the
    # `default` preset. TSM fixes its segment count, so the plan is spatial only (long cycle
    # (1, 0.707), (1, 1) with the short cycle): 1.66x fewer iterations predicted.
    'tsm': dict(
        configs={run: str(REPO / 'configs' / f'synthetic_tsm_{run}.py') for run in CONFIGS},
        dataset=dict(num_classes=16, train_clips_per_class=64, val_clips_per_class=64, num_frames=48,
                     width=128, height=96, seed=0),
        model=dict(depth=18, num_segments=8, strides=(1, 2, 2, 1)),
        head=dict(in_channels=512, num_segments=8),
        pipeline=dict(clip_len=1, num_clips=8, frame_interval=1, short_side=54, crop_size=48),
        schedule=dict(max_epochs=6, milestones=[4, 5], warmup_epochs=1, lr=0.02, batch_size=4),
        threads=1, workers=2),
}
#: Arguments of the frame sampler that a preset's ``pipeline`` may set.
SAMPLER_KEYS = ('clip_len', 'num_clips', 'frame_interval')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', choices=sorted(PRESETS), default='default')
    parser.add_argument('--work-dir', type=Path, default=REPO / 'work_dirs' / 'speedup')
    parser.add_argument('--out', type=Path, help='JSON results (default: WORK_DIR/speedup.json)')
    parser.add_argument('--plot', type=Path, help='PNG (default: next to --out)')
    add_data_arguments(parser)
    parser.add_argument('--runs', nargs='+', choices=sorted(CONFIGS), default=['baseline', 'multigrid'])
    args = parser.parse_args(argv)
    check_data_arguments(parser, args)
    args.out = args.out or args.work_dir / 'speedup.json'
    args.plot = args.plot or args.out.with_suffix('.png')
    return args


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options: any mmaction2 ``VideoDataset``, or the synthetic dataset of the preset."""
    parser.add_argument('--data-root', type=Path,
                        help='video folder of a VideoDataset (default: the synthetic dataset)')
    parser.add_argument('--ann-file', type=Path, help='train annotation file (with --data-root)')
    parser.add_argument('--val-ann-file', type=Path, help='val annotation file (with --data-root)')
    parser.add_argument('--num-classes', type=int, help='number of classes (with --data-root)')
    parser.add_argument('--synthetic-root', type=Path,
                        help='where the synthetic dataset of the preset is generated '
                        '(default: data/synthetic-<preset>)')
    parser.add_argument('--format', choices=('video', 'rawframes'), default='video',
                        help='train from the videos, or from frames extracted from them (once, into '
                        'FRAMES_ROOT, with the smaller copies the grid shapes need)')
    parser.add_argument('--frames-root', type=Path,
                        help='where rawframes are extracted (default: <video folder>-rawframes)')


def check_data_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a partial custom dataset; set the synthetic root (``args.preset`` names its default)."""
    custom = (args.data_root, args.ann_file, args.val_ann_file, args.num_classes)
    if any(v is not None for v in custom) and not all(v is not None for v in custom):
        parser.error('--data-root, --ann-file, --val-ann-file and --num-classes go together')
    # The default folder belongs to the benchmark: it is regenerated when its parameters change.
    args.own_synthetic_root = args.synthetic_root is None
    args.synthetic_root = args.synthetic_root or REPO / 'data' / f'synthetic-{args.preset}'


def dataset_paths(args: argparse.Namespace, preset: dict) -> dict[str, Any]:
    """The data of the runs: videos (``video_dir``), or with ``--format rawframes`` frames extracted
    from them (``frames_root``, ``copies``) and rawframe annotations."""
    videos = video_paths(args, preset)
    if getattr(args, 'format', 'video') == 'video':
        return videos
    copies = copies_for_config(build_config('multigrid', preset, videos))
    root = args.frames_root or Path(f"{videos['video_dir']}-rawframes")
    data = dict(videos, frames_root=root, copies=copies)
    for key in ('train_ann', 'val_ann'):
        print(f'extracting the frames of {videos[key]} into {root} (copies {list(copies)}) ...',
              flush=True)
        extracted = extract_dataset(videos[key], videos['video_dir'], root,
                                    root / Path(videos[key]).name, copies, workers=os.cpu_count(),
                                    reuse=True)
        if extracted.failures:
            raise SystemExit(f'cannot extract the frames of {extracted.failures}')
        data[key] = extracted.ann_file
    return data


def video_paths(args: argparse.Namespace, preset: dict) -> dict[str, Any]:
    if args.data_root is not None:
        return dict(video_dir=args.data_root, train_ann=args.ann_file, val_ann=args.val_ann_file,
                    num_classes=args.num_classes)
    try:
        ds = make_dataset(args.synthetic_root, **preset['dataset'])
    except FileExistsError:
        if not args.own_synthetic_root:
            raise
        print(f'regenerating {args.synthetic_root}: made with other parameters', flush=True)
        ds = make_dataset(args.synthetic_root, **preset['dataset'], overwrite=True)
    return dict(video_dir=ds.video_dir, train_ann=ds.train_ann, val_ann=ds.val_ann,
                num_classes=ds.num_classes)


def build_config(run: str, preset: dict, data: dict[str, Any]) -> Config:
    """The run's config: the shipped synthetic config (the preset's ``configs``, else the R3D ones)
    with the preset's sizes (its ``head``, else ``in_channels`` from ``base_channels``) and the data
    paths (rawframes when ``data`` has ``frames_root``: ``ScaledRawFrameDecode`` for training,
    ``RawFrameDecode`` for validation)."""
    cfg = Config.fromfile(preset.get('configs', CONFIGS)[run])
    model, pipe, sched = preset['model'], preset['pipeline'], preset['schedule']
    cfg.model.backbone.update(model)
    cfg.model.cls_head.update(num_classes=data['num_classes'],
                              **preset.get('head', dict(in_channels=model.get('base_channels', 0) * 8)))
    train_transforms = (cfg.train_dataloader.dataset.pipeline[0].transforms if run == 'multigrid'
                        else cfg.train_dataloader.dataset.pipeline)
    for transforms in (train_transforms, cfg.val_dataloader.dataset.pipeline):
        for t in transforms:
            if t['type'] == 'SampleFrames':
                t.update({key: pipe[key] for key in SAMPLER_KEYS if key in pipe})
            elif t['type'] == 'Resize':
                t['scale'] = ((-1, pipe['short_side']) if t['scale'][0] == -1 else
                              (pipe['crop_size'], pipe['crop_size']))
            elif t['type'] == 'CenterCrop':
                t['crop_size'] = pipe['short_side']
    for name, ann in (('train_dataloader', data['train_ann']), ('val_dataloader', data['val_ann'])):
        loader = cfg[name]
        loader.update(num_workers=preset['workers'], persistent_workers=preset['workers'] > 0)
        loader.dataset.update(ann_file=str(ann), data_prefix=dict(video=str(data['video_dir'])))
    if 'frames_root' in data:
        use_rawframes(cfg, train_transforms, data['frames_root'], data['copies'])
    cfg.train_dataloader.batch_size = sched['batch_size']
    cfg.test_dataloader = cfg.val_dataloader
    cfg.optim_wrapper.optimizer.lr = sched['lr']
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, begin=0, end=sched['warmup_epochs'], by_epoch=True,
             convert_to_iter_based=True),
        dict(type='MultiStepLR', begin=0, end=sched['max_epochs'], by_epoch=True,
             milestones=sched['milestones'], gamma=0.1)]
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=sched['max_epochs'], val_interval=1)
    # every iteration logged unsmoothed, so the sum of `time` is the training wall-clock
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, ignore_last=False)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=True)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=True)
    return cfg


def use_rawframes(cfg: Config, train_transforms: list, frames_root: Path,
                  copies: tuple[int, ...]) -> None:
    """Switch ``cfg`` from videos to the rawframes in ``frames_root``: no ``DecordInit``, decoding by
    ``ScaledRawFrameDecode(copies)`` in training and ``RawFrameDecode`` in validation."""
    for transforms, decoder in ((train_transforms, dict(type='ScaledRawFrameDecode', copies=copies)),
                                (cfg.val_dataloader.dataset.pipeline, dict(type='RawFrameDecode'))):
        transforms[:] = [decoder if t['type'] == 'DecordDecode' else t for t in transforms
                         if t['type'] != 'DecordInit']
    for name in ('train_dataloader', 'val_dataloader'):
        cfg[name].dataset.type = 'RawframeDataset'
        cfg[name].dataset.data_prefix = dict(img=str(frames_root))


def set_validation(cfg: Config, epochs: int, count: int = VALIDATIONS) -> None:
    """Validate about ``count`` times, at the same fractions of training in both runs."""
    interval = max(1, epochs // count)
    cfg.train_cfg.val_interval = interval
    cfg.train_cfg.val_begin = max(1, epochs - interval * (count - 1))


def read_scalars(work_dir: Path) -> tuple[list[dict], list[dict], list[int]]:
    """(train rows, val rows, epochs resumed after) of the run in ``work_dir``: the
    ``vis_data/scalars.json`` of every process it trained in since ``train`` started it (the
    ``<timestamp>`` folders not among the earlier ones of its ``RUN_START`` file; without that file
    the latest)."""
    start = work_dir / RUN_START
    if start.exists():
        earlier = json.loads(start.read_text())['earlier_logs']
        logs = sorted(set(log_dirs(work_dir)) - set(earlier))
        rows, resumed_after = resumed_scalars([work_dir / d for d in logs])
    else:
        rows, resumed_after = latest_scalars(work_dir), []
    return ([r for r in rows if 'loss' in r], [r for r in rows if 'acc/top1' in r], resumed_after)


def log_dirs(work_dir: Path) -> list[str]:
    """The ``<timestamp>`` folders mmengine made in ``work_dir``, one per process."""
    return sorted(p.parent.parent.name for p in work_dir.glob('*/vis_data/scalars.json'))


def summarize(run: str, work_dir: Path, process_s: float) -> dict[str, Any]:
    """The run's training time, iterations, validation curve and data-wait shares; a run resumed in
    another process (``resumed_after_epochs``) has no ``process_wall_clock_s``: its earlier
    processes' time is not known."""
    train_rows, val_rows, resumed_after = read_scalars(work_dir)
    elapsed, epoch_end_time = 0.0, {}
    wait: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    epoch_shapes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in train_rows:
        elapsed += row['time']
        epoch_end_time[row['epoch']] = elapsed
        shape = (f"{row['batch_size']}x{row['clip_len']}x{row['crop_size']}"
                 if 'batch_size' in row else 'base')
        wait[shape][0] += row['data_time']
        wait[shape][1] += row['time']
        epoch_shapes[row['epoch']][shape] += 1
    # precise_bn_batches: the BN statistics recomputed before this validation (MultigridHook)
    curve = [dict(epoch=r['step'], wall_clock_s=epoch_end_time[r['step']], top1=r['acc/top1'],
                  **{k: r[k] for k in ('precise_bn_batches', ) if k in r})
             for r in val_rows]
    return dict(
        wall_clock_s=elapsed, iterations=len(train_rows), top1=val_rows[-1]['acc/top1'],
        process_wall_clock_s=None if resumed_after else process_s, validation_curve=curve,
        data_wait_share=sum(w for w, _ in wait.values()) / elapsed,
        epoch_iterations_per_shape={str(e): dict(c) for e, c in sorted(epoch_shapes.items())},
        data_wait_share_per_shape={k: w / t for k, (w, t) in sorted(wait.items())},
        **(dict(resumed_after_epochs=resumed_after) if resumed_after else {}))


def train(run: str, cfg: Config, work_dir: Path, threads: int, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` through ``tools/train.py`` in ``work_dir`` and summarize it. ``resume``: continue
    the run that an earlier call started there with the same config, from its last checkpoint
    (``tools/train.py --resume``), when it has one; otherwise start afresh."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config, start_record = work_dir / f'{run}.py', work_dir / RUN_START
    resuming = (resume and (work_dir / 'last_checkpoint').exists() and start_record.exists()
                and json.loads(start_record.read_text())['config'] == cfg.pretty_text)
    if resuming:
        print(f"{work_dir.name}: resuming from {(work_dir / 'last_checkpoint').read_text().strip()}",
              flush=True)
    else:
        start_record.write_text(json.dumps(dict(config=cfg.pretty_text, earlier_logs=log_dirs(work_dir))))
    cfg.dump(config)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    with open(work_dir / 'train.log', 'a' if resuming else 'w') as log:
        proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(config),
                               '--work-dir', str(work_dir)] + (['--resume'] if resuming else []),
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f'{run} training failed, see {work_dir / "train.log"}')
    return summarize(run, work_dir, time.perf_counter() - start)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (acc_ax, wait_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, style in (('baseline', 'o-'), ('multigrid', 's-')):
        if run not in results:
            continue
        curve = results[run]['validation_curve']
        acc_ax.plot([p['wall_clock_s'] / 60 for p in curve], [100 * p['top1'] for p in curve], style,
                    label=f"{run} ({results[run]['wall_clock_s'] / 60:.1f} min)")
    acc_ax.set(xlabel='training wall-clock (min)', ylabel='validation top-1 (%)',
               title='Accuracy against wall-clock')
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()
    labels, shares = [], []
    for run in ('baseline', 'multigrid'):
        for shape, share in results.get(run, {}).get('data_wait_share_per_shape', {}).items():
            labels.append(f'{run} {shape}')
            shares.append(100 * share)
    wait_ax.barh(labels, shares, color='tab:gray')
    wait_ax.set(xlabel='time waiting for data (% of iteration time)',
                title='Data wait per grid shape (B x T x S)')
    wait_ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def curve_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The value at ``x`` of the curve through ``(x, y)`` points (joined by lines, flat after the
    last); None before the first."""
    points = sorted(points)
    if not points or x < points[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return points[-1][1]


def verdict(results: dict[str, Any]) -> str:
    """What the side-by-side run measured, in words: speed-up, final top-1 and top-1 at equal time."""
    base, multi = results['baseline'], results['multigrid']
    gap = 100 * (multi['top1'] - base['top1'])
    lines = [f"verdict: multigrid trained {results['speedup']:.2f}x faster than the baseline (the plan "
             f"predicts {results['predicted_speedup']:.2f}x) and ended {abs(gap):.1f} points "
             f"{'above' if gap >= 0 else 'below'} it ({100 * multi['top1']:.1f}% against "
             f"{100 * base['top1']:.1f}% top-1 on {results['val_clips']} validation clips)."]
    level = curve_at([(p['wall_clock_s'], p['top1']) for p in base['validation_curve']],
                     multi['wall_clock_s'])
    if level is not None:
        lines.append(f"At multigrid's training time ({multi['wall_clock_s'] / 60:.1f} min) the baseline "
                     f'was at {100 * level:.1f}% (its validation curve, interpolated).')
    if gap < -1:
        lines.append('A run this short does not show accuracy parity; benchmarks/budget_sweep.py '
                     'compares both methods at several schedule lengths (README, Measured results).')
    return '\n'.join(lines)


def table(results: dict[str, Any]) -> str:
    lines = [f"{'run':<10} {'wall-clock':>11} {'iterations':>10} {'top-1':>7} {'data wait':>9}"]
    for run in ('baseline', 'multigrid'):
        if run in results:
            r = results[run]
            lines.append(f"{run:<10} {r['wall_clock_s']:>10.1f}s {r['iterations']:>10d} "
                         f"{100 * r['top1']:>6.1f}% {100 * r['data_wait_share']:>8.1f}%")
    if 'speedup' in results:
        lines.append(f"speed-up {results['speedup']:.2f}x measured, "
                     f"{results['predicted_speedup']:.2f}x predicted (iteration ratio); "
                     f"top-1 {100 * (results['multigrid']['top1'] - results['baseline']['top1']):+.1f} "
                     'points')
        lines.append(verdict(results))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    data = dataset_paths(args, preset)
    train_clips, val_clips = (len(Path(data[key]).read_text().splitlines())
                              for key in ('train_ann', 'val_ann'))
    configs = {run: build_config(run, preset, data) for run in args.runs}
    mg_plan = plan_from_config(build_config('multigrid', preset, data), 1)
    print(format_plan(mg_plan, train_clips))
    if 'baseline' in configs:
        set_validation(configs['baseline'], preset['schedule']['max_epochs'])
    if 'multigrid' in configs:
        set_validation(configs['multigrid'], mg_plan.max_epochs)
    results: dict[str, Any] = dict(
        preset=args.preset, machine=machine(),
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        command=' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        train_clips=train_clips, val_clips=val_clips, settings=preset, format=args.format)
    for run in args.runs:
        print(f'training {run} ...', flush=True)
        results[run] = train(run, configs[run], args.work_dir / run, preset['threads'])
    if {'baseline', 'multigrid'} <= set(results):
        baseline_iters, multigrid_iters = mg_plan.iterations(train_clips)
        results['speedup'] = results['baseline']['wall_clock_s'] / results['multigrid']['wall_clock_s']
        results['predicted_speedup'] = baseline_iters / multigrid_iters
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n')
    plot(results, args.plot)
    print(table(results))
    print(f'results: {args.out}\nplot:    {args.plot}')
    return results


def machine() -> dict[str, Any]:
    """Platform, CPU count and CPU model of this machine, for the JSON of a benchmark."""
    return dict(platform=platform.platform(), cpus=os.cpu_count(), processor=_cpu_model())


def _cpu_model() -> str:
    for line in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor()


if __name__ == '__main__':
    main()
