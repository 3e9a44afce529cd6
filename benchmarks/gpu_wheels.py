"""Download the wheels that ``benchmarks/device_check.sh`` needs on the lent GPU machine.

That machine (one H200, Python 3.12 with torch 2.11 and the packages listed in
``benchmarks/gpu_image_packages.txt``) cannot reach a registry, and mmengine, mmcv-lite, mmaction2 and
decord are not in its image. This script resolves ``requirements.txt`` (plus what the check's
``stack_fixes`` step runs: pytest, hypothesis) for CPython 3.12 on manylinux x86-64: every requirement,
and every requirement of a downloaded wheel, is either in the image (then nothing is carried; a version
known there must satisfy it, except the project's own pins, whose differences are listed) or downloaded
as a wheel, at the version ``constraints.txt`` pins where it pins one. setuptools is carried although the
image has one: mmengine 0.10.7 needs its ``pkg_resources`` (``setuptools<81``) and the image's version
is not known. A pure-Python package without a wheel is built into one here.

The wheels land in ``--dest`` (``.gpu_wheels/``, git-ignored; stale ones are removed) with
``manifest.json`` (what is carried, what the image is relied on for). What travels to the machine is
the working tree (tracked and untracked-not-ignored files) plus the carried folder, at most 64 MiB: the
script measures both and exits with status 1, saying by how much, when they do not fit.

    .venv/bin/python benchmarks/gpu_wheels.py            # then carry .gpu_wheels to the GPU machine
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
TRAVEL_LIMIT_MIB = 64
PYTHON_VERSION = '3.12'
# the wheel tags pip may pick for the machine: glibc 2.5 to 2.39 (pip matches each name exactly)
PLATFORMS = (['manylinux1_x86_64', 'manylinux2010_x86_64', 'manylinux2014_x86_64']
             + [f'manylinux_2_{minor}_x86_64' for minor in range(5, 40)])
MARKER_ENV = dict(python_version=PYTHON_VERSION, python_full_version='3.12.3', sys_platform='linux',
                  platform_system='Linux', platform_machine='x86_64', os_name='posix',
                  implementation_name='cpython', platform_python_implementation='CPython', extra='')
# what device_check.sh runs besides the runtime stack (its stack_fixes step)
CHECK_REQUIREMENTS = ('pytest', 'hypothesis')
# requirements that another installed distribution provides under the same import name (cv2)
PROVIDED_BY = {'opencv-python': 'opencv-python-headless',
               'opencv-contrib-python': 'opencv-python-headless'}
# carried although the image has them
CARRY_ANYWAY = {'setuptools': "mmengine 0.10.7 needs pkg_resources (setuptools<81); the image's "
                              'setuptools version is not known'}


@dataclass
class Wheel:
    """One carried wheel and the requirements that brought it in."""

    name: str
    version: Version
    path: Path
    required_by: list[str] = field(default_factory=list)


@dataclass
class WheelSet:
    """The resolution: carried wheels, and what the image is relied on for (name -> requirements)."""

    wheels: dict[str, Wheel] = field(default_factory=dict)
    from_image: dict[str, list[str]] = field(default_factory=dict)
    pin_differences: list[str] = field(default_factory=list)


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of a requirements/constraints file (comments and blank lines skipped)."""
    lines = (line.split('#', 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def read_image_packages(path: Path) -> dict[str, Version | None]:
    """The image's packages: canonical name -> version where one is known."""
    packages: dict[str, Version | None] = {}
    for req in read_requirements(path):
        pins = [spec.version for spec in req.specifier if spec.operator == '==']
        packages[canonicalize_name(req.name)] = Version(pins[0]) if pins else None
    return packages


def wheel_requirements(path: Path) -> list[Requirement]:
    """``Requires-Dist`` of a wheel's own METADATA (not of the distributions it vendors)."""
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist()
                        if n.count('/') == 1 and n.endswith('.dist-info/METADATA')
                        and canonicalize_name(n.split('-', 1)[0]) == name)
        text = archive.read(metadata).decode()
    return [Requirement(line.split(':', 1)[1]) for line in text.splitlines()
            if line.startswith('Requires-Dist:')]


def applies(req: Requirement) -> bool:
    """Whether ``req`` is needed on the machine (its marker, no extras)."""
    return req.marker is None or req.marker.evaluate(MARKER_ENV)


def is_pure_python(path: Path) -> bool:
    """Whether a wheel runs on any platform (``none-any`` tags only)."""
    _, _, _, tags = parse_wheel_filename(path.name)
    return all(tag.abi == 'none' and tag.platform == 'any' for tag in tags)


def pip(*args: str) -> None:
    """Run this Python's pip quietly; raise with its output if it fails."""
    proc = subprocess.run([sys.executable, '-m', 'pip', *args, '--quiet', '--disable-pip-version-check'],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'pip {" ".join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}')


def fetch_wheel(req: Requirement, dest: Path) -> Path:
    """A wheel of ``req`` for the machine in ``dest``: one already there that satisfies it, else downloaded
    (or, for a pure-Python package published only as a source archive, built here)."""
    name = canonicalize_name(req.name)
    for path in sorted(dest.glob('*.whl')):
        wheel_name, version, _, _ = parse_wheel_filename(path.name)
        if wheel_name == name and req.specifier.contains(version, prereleases=True):
            return path
    spec = f'{req.name}{req.specifier}'
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pip('download', '--no-deps', '--only-binary=:all:', '--python-version', PYTHON_VERSION,
                '--implementation', 'cp', *(arg for p in PLATFORMS for arg in ('--platform', p)),
                '--dest', tmp, spec)
        except RuntimeError as err:
            pip('wheel', '--no-deps', '--no-binary=:all:', '--wheel-dir', tmp, spec)
            built = next(Path(tmp).glob('*.whl'))
            if not is_pure_python(built):
                raise RuntimeError(f'{spec} has no wheel for CPython {PYTHON_VERSION} manylinux x86-64 '
                                   f'and builds to {built.name}, which is not pure Python') from err
        (path,) = Path(tmp).glob('*.whl')
        return Path(shutil.move(str(path), dest / path.name))


def resolve(roots: Sequence[tuple[Requirement, str]], image: dict[str, Version | None],
            pins: dict[str, Requirement], dest: Path) -> WheelSet:
    """Walk the requirements from ``roots`` ((requirement, where from) pairs), fetching into ``dest``
    every one the image lacks."""
    result = WheelSet()
    queue = list(roots)
    while queue:
        req, source = queue.pop(0)
        if not applies(req):
            continue
        name = canonicalize_name(req.name)
        provider = PROVIDED_BY.get(name, name)
        label = f'{req.name}{req.specifier} ({source})'
        if provider in image and name not in CARRY_ANYWAY:
            result.from_image.setdefault(provider, []).append(label)
            known = image[provider]
            if known is not None and not req.specifier.contains(known, prereleases=True):
                if source in ('requirements.txt', 'device_check.sh'):
                    result.pin_differences.append(f'{provider}: the image has {known}, {label}')
                else:
                    raise ValueError(f'{label} is not met by the image, which has {provider} {known}')
            continue
        if name in result.wheels:
            wheel = result.wheels[name]
            if not req.specifier.contains(wheel.version, prereleases=True):
                raise ValueError(f'{label} conflicts with the carried {name} {wheel.version} '
                                 f'(required by {", ".join(wheel.required_by)}); pin one version in '
                                 'constraints.txt')
            wheel.required_by.append(label)
            continue
        pin = pins.get(name)
        if pin is not None and all(req.specifier.contains(s.version) for s in pin.specifier
                                   if s.operator == '=='):
            req = Requirement(f'{req.name}{pin.specifier}')
        path = fetch_wheel(req, dest)
        _, version, _, _ = parse_wheel_filename(path.name)
        result.wheels[name] = Wheel(name, version, path, [label])
        queue.extend((dep, str(name)) for dep in wheel_requirements(path))
    return result


def travelling_tree_bytes(repo: Path) -> int:
    """Bytes of the working tree that travels: tracked and untracked files that git does not ignore."""
    listing = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                             cwd=repo, capture_output=True, text=True, check=True).stdout
    paths = {repo / p for p in listing.split('\0') if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def travel_error(tree_bytes: int, wheels_bytes: int, limit_mib: float) -> str | None:
    """Why the working tree and the wheels cannot travel together, or None if they fit."""
    over = tree_bytes + wheels_bytes - limit_mib * MIB
    if over <= 0:
        return None
    return (f'working tree {tree_bytes / MIB:.1f} MiB + wheels {wheels_bytes / MIB:.1f} MiB is '
            f'{over / MIB:.1f} MiB over the {limit_mib:g} MiB that may travel to the GPU machine: '
            'drop wheels or untracked files')


def is_ignored(repo: Path, path: Path) -> bool:
    """Whether git ignores ``path`` (so that it travels only when carried)."""
    return subprocess.run(['git', 'check-ignore', '-q', str(path)], cwd=repo).returncode == 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dest', type=Path, default=REPO / '.gpu_wheels',
                        help='folder for the wheels (git-ignored; carried to the machine)')
    parser.add_argument('--limit-mib', type=float, default=TRAVEL_LIMIT_MIB,
                        help='what may travel: working tree plus wheels (MiB)')
    args = parser.parse_args(argv)
    if args.limit_mib <= 0:
        parser.error(f'--limit-mib must be positive, got {args.limit_mib}')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    roots = [(req, 'requirements.txt') for req in read_requirements(REPO / 'requirements.txt')]
    roots += [(Requirement(name), 'device_check.sh') for name in CHECK_REQUIREMENTS]
    pins = {canonicalize_name(req.name): req for req in read_requirements(REPO / 'constraints.txt')}
    image = read_image_packages(REPO / 'benchmarks' / 'gpu_image_packages.txt')
    result = resolve(roots, image, pins, dest)
    kept = {wheel.path.name for wheel in result.wheels.values()}
    for stale in dest.glob('*.whl'):
        if stale.name not in kept:
            stale.unlink()

    wheels_bytes = sum(wheel.path.stat().st_size for wheel in result.wheels.values())
    tree_bytes = travelling_tree_bytes(REPO)
    for wheel in sorted(result.wheels.values(), key=lambda w: w.name):
        print(f'{wheel.path.stat().st_size / MIB:7.2f} MiB  {wheel.path.name}  '
              f'<- {"; ".join(wheel.required_by)}')
    print(f'from the image: {", ".join(sorted(result.from_image))}')
    for difference in result.pin_differences:
        print(f'differs from the pin: {difference}')
    for name, reason in CARRY_ANYWAY.items():
        print(f'carried although in the image: {name} ({reason})')
    total = wheels_bytes + tree_bytes
    print(f'travels: working tree {tree_bytes / MIB:.1f} MiB + wheels {wheels_bytes / MIB:.1f} MiB = '
          f'{total / MIB:.1f} MiB of {args.limit_mib:g} MiB')
    manifest = dict(
        python=PYTHON_VERSION, platforms=PLATFORMS,
        wheels=[dict(name=w.name, version=str(w.version), file=w.path.name,
                     bytes=w.path.stat().st_size, required_by=w.required_by)
                for w in sorted(result.wheels.values(), key=lambda w: w.name)],
        from_image={name: dict(version=None if image[name] is None else str(image[name]),
                               required_by=labels) for name, labels in sorted(result.from_image.items())},
        pin_differences=result.pin_differences,
        travel=dict(tree_bytes=tree_bytes, wheels_bytes=wheels_bytes, limit_bytes=int(args.limit_mib * MIB)))
    (dest / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    if not dest.is_relative_to(REPO):
        print(f'error: {dest} is outside the checkout {REPO}: only folders inside it can be carried',
              file=sys.stderr)
        return 1
    if not is_ignored(REPO, dest):
        print(f'error: git does not ignore {dest}: it would travel twice (add it to .gitignore)',
              file=sys.stderr)
        return 1
    error = travel_error(tree_bytes, wheels_bytes, args.limit_mib)
    if error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
