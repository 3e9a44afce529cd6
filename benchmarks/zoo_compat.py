"""Does every recognition config of the installed mmaction2 train with multigrid, or is it refused?

For each config under ``mmaction/.mim/configs/recognition/`` the README's four lines are applied (a
config file of ``_base_ = [CONFIG]`` plus those lines, read as the user's would be), then:

1. the start-up checks that need no model: the plan (``plan_from_config``, ``--gpus`` GPUs), the
   batch-norm groups and the crops of the train pipeline (``mmmultigrid.engine.preflight``);
2. the model check, in a subprocess with a time limit: the config's model built on the CPU without
   pretrained weights (``pretrained``/``pretrained2d``/``clip_pretrained`` off, ``init_weights`` not
   called), adapted as ``MultigridHook`` adapts it (grouped batch norm, :mod:`mmmultigrid.models.embeddings`),
   the model checks of preflight (SlowFast strides, embeddings), then at every distinct (T, S) of the
   plan, cheapest first, one training step's forward (``mode='loss'``, random clips and labels) and
   backward on a batch of ``--batch`` clips. The base shape is skipped unless ``--base-shape``: it is
   the config's own training shape, where the adapted model is the plain one (tests/models/test_embeddings.py)
   and by far the dearest step on a CPU. A shape whose forward fails is explained as preflight would
   (:func:`mmmultigrid.models.shape_failure.explain_failure`).

Statuses: ``trains`` (every step ran), ``refused`` (a start-up error that names its cause),
``not applicable`` (a test-only config: no training to change), ``needs a package`` (the model is
built from an optional package this machine lacks: torchvision, timm, mmpretrain, mmcls, or mmcv's
compiled ops), ``crash`` (any other error, including a shape that preflight lets through and training
cannot run), ``timeout`` (the model check did not end
within ``--timeout`` seconds; the shapes that ran are listed). A batch of 1 clip cannot train batch
norm where a feature map is 1 x 1 x 1 (PyTorch needs more than one value per channel): ``--batch 2``
there. Configs whose model and grid shapes are the same (they differ in data,
schedule or number of classes) share one model check: ``checked_by`` names the config that stood for
them.

    OMP_NUM_THREADS=1 python benchmarks/zoo_compat.py --jobs 2 \
        --out benchmarks/results/zoo_compat.json --markdown benchmarks/results/zoo_compat.md
    python benchmarks/zoo_compat.py --families timesformer,mvit --limit 1 --out /tmp/zoo.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

import mmaction  # noqa: E402
import mmmultigrid  # noqa: E402,F401  (stack fixes and registries before any config is read)
import torch  # noqa: E402
from mmaction.registry import MODELS  # noqa: E402
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from mmmultigrid.baseline import base_variable_hint, plan_from_config, train_transforms  # noqa: E402
from mmmultigrid.models.batch_mixing import find_batch_mixing  # noqa: E402
from mmmultigrid.models.batchnorm import use_grouped_batchnorm  # noqa: E402
from mmmultigrid.models.embeddings import adapt_embeddings, embedding_problems  # noqa: E402
from mmmultigrid.data.pipeline import ShapeVaryingPipeline  # noqa: E402
from mmmultigrid.plan import MultigridPlan  # noqa: E402
from mmmultigrid.engine.preflight import check_crops, check_temporal_strides  # noqa: E402
from mmmultigrid.models.segments import clip_batch  # noqa: E402
from mmmultigrid.models.shape_failure import explain_failure, run_clip  # noqa: E402

CONFIG_ROOT = Path(mmaction.__file__).parent / '.mim' / 'configs' / 'recognition'
STATUSES = ('trains', 'refused', 'not applicable', 'needs a package', 'crash', 'timeout')
FOUR_LINES = '''_base_ = [{base!r}]

custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
train_dataloader = dict(
    batch_sampler=dict(type='MultigridSampler'),
    dataset=dict(pipeline=[dict(type='ShapeVaryingPipeline', transforms={{{{_base_.train_pipeline}}}})]))
custom_hooks = [dict(type='MultigridHook')]
'''
#: Model keys that load weights: a true value becomes False (a flag) or None (a path).
NO_PRETRAINED = ('pretrained', 'pretrained2d', 'clip_pretrained')
#: Model keys that do not change which shapes the model takes (left out of the sharing key).
SHAPE_NEUTRAL = ('num_classes',)


class Refused(Exception):
    """A start-up error that names its cause (the status ``refused``)."""


class NotApplicable(Exception):
    """A config with nothing to train (the status ``not applicable``)."""


class Unavailable(Exception):
    """A model that needs an optional package this machine lacks (the status ``needs a package``)."""


def missing_package(error: Exception) -> str | None:
    """What an error of building a model says is missing, when it is an optional package: mmaction2
    raises ``ImportError('Please install X ...')`` for a backbone of another library, and does not
    register a model whose package failed to import (``KeyError: 'X is not in the ... registry'``)."""
    text = str(error).strip("'\"")
    if isinstance(error, ImportError):
        return f'{type(error).__name__}: {text}'
    if isinstance(error, KeyError) and 'is not in the' in text and 'registry' in text:
        name = text.split(' is not in the')[0]
        return (f'{name} is not registered: mmaction2 registers it only where its optional package '
                f'imports (KeyError: {text.split(". Please")[0]})')
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--families', help='comma-separated folders under configs/recognition '
                        '(default: all)')
    parser.add_argument('--configs', nargs='+', type=Path, help='these config files instead')
    parser.add_argument('--limit', type=int, help='at most this many configs per family')
    parser.add_argument('--gpus', type=int, default=8, help='world size the plan is made for')
    parser.add_argument('--batch', type=int, default=1, help='clips per forward/backward')
    parser.add_argument('--timeout', type=float, default=240, help='seconds per model check')
    parser.add_argument('--base-shape', action='store_true',
                        help="also run the base shape (the config's own, where the adapted model is "
                        'the plain one)')
    parser.add_argument('--jobs', type=int, default=1, help='model checks run at the same time')
    parser.add_argument('--out', type=Path, help='JSON results')
    parser.add_argument('--markdown', type=Path, help='the table by family, as markdown')
    parser.add_argument('--resume', action='store_true',
                        help='keep the configs already in --out and check only the others')
    parser.add_argument('--check', type=Path, help=argparse.SUPPRESS)  # one model check (subprocess)
    args = parser.parse_args(argv)
    for name in ('limit', 'gpus', 'batch', 'jobs'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name} must be >= 1, got {value}')
    if args.timeout <= 0:
        parser.error(f'--timeout must be > 0, got {args.timeout}')
    if args.resume and not args.out:
        parser.error('--resume needs --out')
    return args


def find_configs(families: Sequence[str] | None, limit: int | None) -> list[Path]:
    """The recognition configs of the installed mmaction2, sorted, by family."""
    by_family: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(CONFIG_ROOT.rglob('*.py')):
        if '__pycache__' not in path.parts:
            by_family[family(path)].append(path)
    unknown = sorted(set(families or ()) - set(by_family))
    if unknown:
        raise SystemExit(f'error: no family {", ".join(unknown)} under {CONFIG_ROOT}; the families '
                         f'are {", ".join(sorted(by_family))}')
    return [p for name in sorted(families or by_family) for p in by_family[name][:limit]]


def family(path: Path) -> str:
    """``i3d`` for ``.../recognition/i3d/...``; the parent folder for a config elsewhere."""
    parts = path.resolve().parts
    root = CONFIG_ROOT.resolve().parts
    return parts[len(root)] if parts[:len(root)] == root else path.parent.name


def name_of(path: Path) -> str:
    """The config's path under the recognition folder (or as given, elsewhere)."""
    try:
        return str(path.resolve().relative_to(CONFIG_ROOT.resolve()))
    except ValueError:
        return str(path)


def multigrid_config(path: Path, folder: Path) -> Config:
    """``path`` with the README's four lines on top, read as ``tools/train.py`` reads a config."""
    wrapped = folder / f'{path.stem}_multigrid.py'
    wrapped.write_text(FOUR_LINES.format(base=str(path.resolve())))
    try:
        with base_variable_hint(str(wrapped)):
            return Config.fromfile(wrapped)
    except ValueError as exc:
        if not Config.fromfile(path).get('train_dataloader'):
            raise NotApplicable('test-only config: no train_dataloader and no train_pipeline for the '
                                "README's lines to wrap (tools/train.py and tools/plan.py say so)") \
                from None
        raise Refused(str(exc).replace(str(wrapped), 'the config')) from None


def without_pretrained(cfg: Any) -> Any:
    """A copy of a model config with every weight download off (:data:`NO_PRETRAINED`; an init_cfg
    of type ``Pretrained`` removed, so the module's default applies)."""
    if isinstance(cfg, dict):
        out = {}
        for key, value in cfg.items():
            if key in NO_PRETRAINED and value:
                value = False if isinstance(value, bool) else None
            elif key == 'init_cfg' and 'Pretrained' in repr(value):
                continue  # the module's own default (MViT copies it: None is no default there)
            out[key] = without_pretrained(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(without_pretrained(v) for v in cfg)
    return cfg


def sharing_key(model_cfg: dict, plan: MultigridPlan) -> str:
    """Configs with the same key have the same model (up to :data:`SHAPE_NEUTRAL`) and grid shapes."""
    def neutral(cfg: Any) -> Any:
        if isinstance(cfg, dict):
            return {k: neutral(v) for k, v in cfg.items() if k not in SHAPE_NEUTRAL}
        if isinstance(cfg, (list, tuple)):
            return [neutral(v) for v in cfg]
        return cfg
    shapes = sorted({(s.clip_len, s.crop_size) for s in plan.shape_segments()})
    return json.dumps([neutral(model_cfg), shapes], sort_keys=True, default=repr)


def make_plan(cfg: Config, gpus: int) -> MultigridPlan:
    """The plan, or ``NotApplicable`` / ``Refused`` with the message."""
    if not cfg.get('train_dataloader'):
        raise NotApplicable('test-only config: no train_dataloader')
    try:
        return plan_from_config(cfg, gpus)
    except (ValueError, TypeError) as exc:
        raise Refused(f'{type(exc).__name__}: {exc}') from None


def config_refusal(cfg: Config, plan: MultigridPlan) -> str | None:
    """The first message of the preflight checks that need no model (the crops)."""
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    try:
        check_crops(plan, ShapeVaryingPipeline(train_transforms(cfg)))
    except ValueError as exc:
        return f'{type(exc).__name__}: {exc}'
    return None


def model_check(path: Path, gpus: int, batch: int, base_shape: bool = False,
                progress: Callable[[dict], None] = lambda step: None) -> dict[str, Any]:
    """Build and adapt the model of ``path`` (four lines applied) and run a training step's forward and
    backward at every distinct (T, S) of its plan, cheapest first, but the base shape unless
    ``base_shape`` (the config's own, where the adapted model is the plain one); the result entry
    (status, reason, seconds). ``progress`` gets each step's entry as it ends."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cfg = multigrid_config(path, Path(folder))
    plan = make_plan(cfg, gpus)
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    try:
        model = MODELS.build(without_pretrained(cfg.model.to_dict()))
    except (ImportError, KeyError) as exc:
        missing = missing_package(exc)
        if missing is None:
            raise
        raise Unavailable(missing) from None
    use_grouped_batchnorm(model, plan.options.bn_base_size)
    adapted = adapt_embeddings(model)
    try:
        check_temporal_strides(plan, getattr(model, 'backbone', model))
        problems = embedding_problems(model, plan)
    except ValueError as exc:
        raise Refused(f'{type(exc).__name__}: {exc}') from None
    if problems:
        raise Refused(problems[0])
    mixing = find_batch_mixing(model, plan)  # as preflight checks it at start-up
    if mixing is not None:
        raise Refused(f'preflight: {mixing}')
    base = (plan.base.clip_len, plan.base.crop_size)
    shapes = sorted({(s.clip_len, s.crop_size) for s in plan.shape_segments()} - (
        set() if base_shape else {base}), key=lambda k: k[0] * k[1] ** 2)
    num_classes = cfg.model.get('cls_head', {}).get('num_classes', 1)
    timings = []
    for clip_len, crop_size in shapes:
        step = time.perf_counter()
        try:
            train_step(model, batch, clip_len, crop_size, num_classes)
        except RuntimeError:
            model.eval()
            try:  # preflight's forward (feature maps): does start-up refuse this shape?
                run_clip(model, clip_len, crop_size)
            except RuntimeError as error:
                raise Refused('preflight: ' + explain_failure(model, plan, clip_len, crop_size,
                                                              error)) from None
            raise  # start-up lets the shape through, training fails at it
        timings.append(dict(clip_len=clip_len, crop_size=crop_size,
                            seconds=round(time.perf_counter() - step, 2)))
        progress(timings[-1])
    skipped = '' if base_shape else f' (and not at the base shape {base[0]}x{base[1]})'
    return dict(status='trains', reason=f'a training step of {batch} clip(s) at {len(shapes)} grid '
                f'shapes, T x S: {", ".join(f"{t}x{s}" for t, s in shapes)}{skipped}',
                adapted=adapted, steps=timings, seconds=round(time.perf_counter() - start, 1))


def train_step(model: torch.nn.Module, batch: int, clip_len: int, crop_size: int,
               num_classes: int) -> None:
    """One training forward (random clips, random labels) and backward; gradients cleared after."""
    model.train()
    inputs = torch.randn_like(clip_batch(model, batch, clip_len, crop_size))
    samples = [ActionDataSample().set_gt_label(torch.randint(num_classes, ())) for _ in range(batch)]
    try:
        losses = model(inputs, samples, mode='loss')
        sum(v.sum() for k, v in losses.items() if 'loss' in k).backward()
    finally:
        model.zero_grad(set_to_none=True)


def check_one(path: Path, gpus: int, batch: int, base_shape: bool = False,
              progress: Callable[[dict], None] = lambda step: None) -> dict[str, Any]:
    """:func:`model_check` with every outcome turned into a result entry."""
    torch.manual_seed(0)
    try:
        return model_check(path, gpus, batch, base_shape, progress)
    except NotApplicable as exc:
        return dict(status='not applicable', reason=str(exc))
    except Refused as exc:
        return dict(status='refused', reason=one_line(str(exc)))
    except Unavailable as exc:
        return dict(status='needs a package', reason=one_line(str(exc)))
    except ImportError as exc:  # an optional package or compiled op imported when the model runs (TIN)
        return dict(status='needs a package', reason=one_line(missing_package(exc)))
    except Exception as exc:  # noqa: BLE001 (any other error is the finding)
        return dict(status='crash', reason=one_line(f'{type(exc).__name__}: {exc}'),
                    traceback=traceback.format_exc(limit=-6))


def one_line(text: str) -> str:
    return ' '.join(text.split())


def run_in_subprocess(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`check_one` in a fresh interpreter (one thread), ended after ``args.timeout`` seconds."""
    command = [sys.executable, __file__, '--check', str(path), '--gpus', str(args.gpus), '--batch',
               str(args.batch)] + (['--base-shape'] if args.base_shape else [])
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired as exc:  # its output is bytes, whatever text=True says
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ''
        steps = [json.loads(line) for line in output.splitlines() if line.startswith('{"clip_len"')]
        ran = ', '.join(f'{s["clip_len"]}x{s["crop_size"]}' for s in steps) or 'none'
        return dict(status='timeout', reason=f'the model check did not end within {args.timeout:g} s '
                    f'(CPU, 1 thread, batch {args.batch}); the grid shapes (T x S) whose training step '
                    f'ran: {ran}', steps=steps, seconds=round(time.perf_counter() - start))
    lines = done.stdout.strip().splitlines()
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return dict(status='crash', reason=f'the check process was killed by {name}' + (
            ' (the kernel kills the largest process when memory runs out: --jobs 1 leaves it all the '
            'memory)' if name == 'SIGKILL' else ''), seconds=round(time.perf_counter() - start))
    if done.returncode or not lines:
        return dict(status='crash', reason=one_line(f'the check process ended with status '
                                                    f'{done.returncode}: {done.stderr[-500:]}'))
    return json.loads(lines[-1])


def plan_all(paths: Sequence[Path], gpus: int) -> tuple[dict[str, dict], dict[str, list[Path]]]:
    """Start-up checks of every config: the entries of those refused or not applicable, and those with a
    plan grouped by :func:`sharing_key` for the model check (the first config of a group stands for
    it; a config refused by :func:`config_refusal` is in both)."""
    decided: dict[str, dict] = {}
    groups: dict[str, list[Path]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            try:
                cfg = multigrid_config(path, Path(folder))
                plan = make_plan(cfg, gpus)
                refusal = config_refusal(cfg, plan)
                if refusal:
                    decided[name_of(path)] = dict(status='refused', reason=one_line(refusal))
                groups[sharing_key(without_pretrained(cfg.model.to_dict()), plan)].append(path)
            except NotApplicable as exc:
                decided[name_of(path)] = dict(status='not applicable', reason=str(exc))
            except Refused as exc:
                decided[name_of(path)] = dict(status='refused', reason=one_line(str(exc)))
            except Exception as exc:  # noqa: BLE001
                decided[name_of(path)] = dict(status='crash',
                                              reason=one_line(f'{type(exc).__name__}: {exc}'))
    return decided, groups


def summarise(entries: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Counts of each status per family."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for entry in entries.values():
        counts[entry['family']][entry['status']] += 1
    return {f: {s: c[s] for s in STATUSES if c[s]} for f, c in sorted(counts.items())}


def markdown_table(entries: dict[str, dict]) -> str:
    """One row per family: configs, the count of each status, and one reason per status not
    ``trains`` (the first config's)."""
    lines = ['| family | configs | ' + ' | '.join(STATUSES) + ' | why not `trains` (first config) |',
             '|---|---|' + '---|' * len(STATUSES) + '---|']
    by_family: dict[str, list[dict]] = defaultdict(list)
    for name, entry in sorted(entries.items()):
        by_family[entry['family']].append(dict(entry, config=name))
    for name, rows in sorted(by_family.items()):
        counts = Counter(r['status'] for r in rows)
        reasons = {}
        for row in rows:
            if row['status'] != 'trains':
                reasons.setdefault(row['status'], f'{row["status"]}: {short(row["reason"])}')
        lines.append(f'| {name} | {len(rows)} | ' + ' | '.join(str(counts[s] or '') for s in STATUSES)
                     + ' | ' + '<br>'.join(reasons.values()).replace('|', '\\|') + ' |')
    return '\n'.join(lines)


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + '...'


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        def progress(step: dict) -> None:
            print(json.dumps(step), flush=True)
        print(json.dumps(check_one(args.check, args.gpus, args.batch, args.base_shape, progress)))
        return 0
    paths = args.configs or find_configs(args.families.split(',') if args.families else None,
                                         args.limit)
    previous = json.loads(args.out.read_text())['configs'] if args.resume and args.out.exists() else {}
    paths = [p for p in paths if name_of(p) not in previous]
    start = time.perf_counter()
    decided, groups = plan_all(paths, args.gpus)
    entries = dict(previous)
    for name, entry in decided.items():
        entries[name] = dict(entry, family=family(CONFIG_ROOT / name))
        print(f'{entry["status"]:15} {name}', flush=True)

    def check_group(members: list[Path]) -> None:
        result = run_in_subprocess(members[0], args)
        for path in members:
            entry = dict(result, family=family(path), checked_by=name_of(members[0]))
            refusal = decided.get(name_of(path))
            if refusal:  # refused before the model is checked; the model check says what follows
                entry.update(status='refused', reason=f'{refusal["reason"]} (then the model check: '
                             f'{result["status"]}: {result["reason"]})')
            entries[name_of(path)] = entry
        print(f'{result["status"]:15} {name_of(members[0])}' + (
            f' (and {len(members) - 1} sharing its model)' if len(members) > 1 else ''), flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(check_group, groups.values()))
    summary = summarise(entries)
    table = markdown_table(entries)
    print(table)
    command = 'python benchmarks/zoo_compat.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    result = dict(command=command, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
                  torch=torch.__version__, mmaction2=mmaction.__version__, gpus=args.gpus,
                  batch=args.batch, timeout_s=args.timeout, jobs=args.jobs,
                  seconds=round(time.perf_counter() - start, 1), summary=summary,
                  configs=dict(sorted(entries.items())))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + '\n')
        print(f'wrote {args.out}')
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f'`{command}` ({result["date"][:10]}, {result["seconds"]:.0f} s)\n\n'
                                 f'{table}\n')
        print(f'wrote {args.markdown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
