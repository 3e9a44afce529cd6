"""The records of ``benchmarks/device_check.sh``: the machine and stack it ran on, and its summary.

    python benchmarks/device_report.py env --out env.json [--carried SITE]
    python benchmarks/device_report.py summary --results DIR --out summary.json [--dry-run] [--final]

``env`` records Python, torch (its CUDA, cuDNN and Triton), the GPU and driver, the version and place of
every package of the stack (``carried`` when it comes from the wheel set installed in ``--carried``), the
requirements of the carried wheels that the machine does not meet, and which of
:mod:`mmmultigrid.stack_fixes`' upstream defects this stack has. ``summary`` gathers ``steps.tsv``
(step, status, seconds), ``env.json`` and each step's figures of interest (the predicted wall-clock
speed-up of ``tools/plan.py --measure-steps``, pytest's result line, a failed step's last log line) from
``--results`` into one JSON.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_wheels import PROVIDED_BY  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# distributions whose version and place the record names
PACKAGES = ('torch', 'triton', 'mmengine', 'mmcv-lite', 'mmaction2', 'decord', 'numpy',
            'opencv-python-headless', 'opencv-python', 'matplotlib', 'scipy', 'pillow', 'einops',
            'setuptools', 'importlib-metadata', 'yapf', 'addict', 'termcolor', 'pytest')


def package_versions(carried: Path | None) -> dict[str, dict[str, str]]:
    """Version and origin (``carried`` or the folder it was found in) of each installed package."""
    found = {}
    for name in PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        place = Path(str(dist.locate_file(''))).resolve()
        origin = 'carried' if carried is not None and place == carried.resolve() else str(place)
        found[name] = dict(version=dist.version, origin=origin)
    return found


def unmet_requirements(carried: Path) -> list[str]:
    """Requirements of the distributions in ``carried`` that nothing importable here meets."""
    unmet = []
    for dist in importlib.metadata.distributions(path=[str(carried)]):
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({'extra': ''}):
                continue
            name = canonicalize_name(req.name)
            try:
                version = importlib.metadata.version(PROVIDED_BY.get(name, name))
            except importlib.metadata.PackageNotFoundError:
                unmet.append(f'{dist.metadata["Name"]}: {line} (not installed)')
                continue
            if not req.specifier.contains(version, prereleases=True):
                unmet.append(f'{dist.metadata["Name"]}: {line} (found {version})')
    return unmet


def gpu_record() -> dict[str, Any]:
    """torch's view of CUDA and, where nvidia-smi is there, the GPU and driver it reports."""
    import torch

    record: dict[str, Any] = dict(torch=torch.__version__, cuda=torch.version.cuda,
                                  cudnn=torch.backends.cudnn.version(),
                                  cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(device=props.name, capability=f'{props.major}.{props.minor}',
                      memory_gib=round(props.total_memory / 2**30, 1),
                      multiprocessors=props.multi_processor_count)
    if shutil.which('nvidia-smi'):
        proc = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                               '--format=csv,noheader'], capture_output=True, text=True)
        record['nvidia_smi'] = proc.stdout.strip() or proc.stderr.strip()
    return record


def stack_defects() -> dict[str, Any]:
    """Which upstream defects that :mod:`mmmultigrid.stack_fixes` repairs are present on this stack
    (the step ``stack_fixes`` runs its tests)."""
    from mmmultigrid import stack_fixes  # noqa: F401  (import applies the fixes)

    return dict(drn_missing_from_mmaction2=stack_fixes.install_drn_stub(),
                pkg_resources_missing=importlib.util.find_spec('pkg_resources') is None)


def environment(carried: Path | None) -> dict[str, Any]:
    """The whole record of ``env``."""
    record = dict(python=platform.python_version(), executable=sys.executable,
                  platform=platform.platform(), gpu=gpu_record(), packages=package_versions(carried),
                  carried=None if carried is None else str(carried))
    if carried is not None:
        record['unmet_requirements'] = unmet_requirements(carried)
    record['stack_defects'] = stack_defects()
    return record


def format_environment(record: dict[str, Any]) -> str:
    """A few lines of ``env``'s record for the log."""
    gpu = record['gpu']
    device = (f"{gpu['device']} (compute {gpu['capability']}, {gpu['memory_gib']} GiB)"
              if gpu['cuda_available'] else 'no CUDA device')
    lines = [f"Python {record['python']} ({record['executable']}); torch {gpu['torch']}, CUDA {gpu['cuda']}, "
             f"cuDNN {gpu['cudnn']}; {device}",
             'packages: ' + ', '.join(f"{name} {p['version']}" + (' (carried)' if p['origin'] == 'carried' else '')
                                      for name, p in record['packages'].items()),
             'stack defects repaired by stack_fixes: ' + ', '.join(
                 f'{name}={value}' for name, value in record['stack_defects'].items())]
    if 'nvidia_smi' in gpu:
        lines.insert(1, f"nvidia-smi: {gpu['nvidia_smi']}")
    if record.get('unmet_requirements'):
        lines.append('unmet requirements of the carried wheels: ' + '; '.join(record['unmet_requirements']))
    return '\n'.join(lines)


def pytest_result(path: Path) -> str | None:
    """pytest's closing line ('26 passed, 3 warnings in 7.1s') in a log, if there is one."""
    if not path.is_file():
        return None
    lines = [line.strip(' =') for line in path.read_text(errors='replace').splitlines()]
    found = [line for line in lines if re.match(r'\d+ (passed|failed|error|skipped)', line)]
    return found[-1] if found else None


def last_line(path: Path) -> str | None:
    """The last non-empty line of a text file, if there is one."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(errors='replace').splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def step_figures(path: Path) -> dict[str, Any]:
    """The figures of a step's JSON worth a line in the summary (the plan's predicted speed-up)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    times = data.get('step_times') if isinstance(data, dict) else None
    if not isinstance(times, dict):
        return {}
    return dict(device=times.get('device'), steps=times.get('steps'), predicted=times.get('predicted'))


def summary(results: Path, dry_run: bool, final: bool) -> dict[str, Any]:
    """The summary of a run of device_check.sh from the files in ``results``."""
    steps = []
    steps_file = results / 'steps.tsv'
    if steps_file.is_file():
        with steps_file.open() as f:
            for row in csv.DictReader(f, delimiter='\t'):
                log = results / f'{row["step"]}.log'
                step = dict(name=row['step'], status=row['status'], seconds=int(row['seconds']))
                if row['status'] != 'ok' and not row['status'].startswith('skipped'):
                    step['last_line'] = last_line(log)
                if pytest_result(log):
                    step['tests'] = pytest_result(log)
                step.update(step_figures(results / f'{row["step"]}.json'))
                steps.append(step)
    env_file = results / 'env.json'
    env = json.loads(env_file.read_text()) if env_file.is_file() else None
    failed = [s['name'] for s in steps if s['status'] != 'ok' and not s['status'].startswith('skipped')]
    return dict(dry_run=dry_run, finished=final, ok=final and not failed, failed=failed, steps=steps,
                env=env, files=sorted(p.name for p in results.iterdir() if p.is_file()))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    env = sub.add_parser('env', help='record the machine and the stack')
    env.add_argument('--out', type=Path, required=True)
    env.add_argument('--carried', type=Path, help='the folder the wheel set was installed into')
    summ = sub.add_parser('summary', help="gather a run's records into one JSON")
    summ.add_argument('--results', type=Path, required=True)
    summ.add_argument('--out', type=Path, required=True)
    summ.add_argument('--dry-run', action='store_true')
    summ.add_argument('--final', action='store_true', help='every step has run')
    args = parser.parse_args(argv)
    if args.command == 'summary' and not args.results.is_dir():
        parser.error(f'--results {args.results} is not a folder')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == 'env':
        record = environment(args.carried)
        args.out.write_text(json.dumps(record, indent=1) + '\n')
        print(format_environment(record))
    else:
        args.out.write_text(json.dumps(summary(args.results, args.dry_run, args.final), indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
