"""benchmarks/gpu_wheels.py: which requirements travel as wheels, which the GPU image meets, and the size
check (offline: the wheels are small stand-ins already in the destination folder)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from runs import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import gpu_wheels  # noqa: E402


def make_wheel(folder: Path, name: str, version: str, requires: list[str],
               tag: str = 'py3-none-any') -> Path:
    """A wheel file with just a METADATA (and one vendored distribution's METADATA, as setuptools has)."""
    path = folder / f'{name}-{version}-{tag}.whl'
    metadata = '\n'.join([f'Name: {name}', f'Version: {version}']
                         + [f'Requires-Dist: {req}' for req in requires])
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr(f'{name}-{version}.dist-info/METADATA', metadata)
        archive.writestr(f'{name}/_vendor/other-1.0.dist-info/METADATA',
                         'Name: other\nVersion: 1.0\nRequires-Dist: never-fetched\n')
    return path


def test_resolution_carries_what_the_image_lacks(tmp_path: Path) -> None:
    make_wheel(tmp_path, 'top', '1.0', ['dep>=2', 'numpy', 'opencv-python>=3',
                                        'winonly; sys_platform == "win32"', 'docs; extra == "doc"'])
    make_wheel(tmp_path, 'dep', '2.1', ['top'])
    make_wheel(tmp_path, 'setuptools', '80.1', [])
    image = {'numpy': Version('2.5.2'), 'opencv-python-headless': None, 'setuptools': None,
             'torch': Version('2.11.0')}
    roots = [(Requirement(r), 'requirements.txt') for r in ('top', 'torch==2.13.0', 'setuptools<81')]
    result = gpu_wheels.resolve(roots, image, {'top': Requirement('top==1.0')}, tmp_path)
    assert {name: str(w.version) for name, w in result.wheels.items()} == {
        'top': '1.0', 'setuptools': '80.1', 'dep': '2.1'}  # setuptools despite the image's
    assert result.wheels['top'].required_by == ['top (requirements.txt)', 'top (dep)']
    assert set(result.from_image) == {'torch', 'numpy', 'opencv-python-headless'}
    assert result.pin_differences == ['torch: the image has 2.11.0, torch==2.13.0 (requirements.txt)']


def test_a_dependency_the_image_does_not_meet_is_an_error(tmp_path: Path) -> None:
    make_wheel(tmp_path, 'top', '1.0', ['numpy<2'])
    with pytest.raises(ValueError, match=r'numpy<2 \(top\) is not met by the image, which has numpy '
                                         r'2\.5\.2'):
        gpu_wheels.resolve([(Requirement('top'), 'requirements.txt')], {'numpy': Version('2.5.2')}, {},
                           tmp_path)


def test_two_versions_of_one_package_are_an_error(tmp_path: Path) -> None:
    make_wheel(tmp_path, 'top', '1.0', ['dep<2'])
    make_wheel(tmp_path, 'dep', '2.1', [])
    roots = [(Requirement('dep==2.1'), 'requirements.txt'), (Requirement('top'), 'requirements.txt')]
    with pytest.raises(ValueError, match=r'dep<2 \(top\) conflicts with the carried dep 2\.1'):
        gpu_wheels.resolve(roots, {}, {}, tmp_path)


def test_pure_python_tags(tmp_path: Path) -> None:
    assert gpu_wheels.is_pure_python(Path('mmcv_lite-2.1.0-py2.py3-none-any.whl'))
    assert not gpu_wheels.is_pure_python(Path('decord-0.6.0-py3-none-manylinux2010_x86_64.whl'))


def test_travelling_size_counts_tracked_and_unignored_files(tmp_path: Path) -> None:
    subprocess.run(['git', 'init', '-q', str(tmp_path)], check=True)
    (tmp_path / '.gitignore').write_text('/.gpu_wheels/\n')
    (tmp_path / 'tracked.py').write_bytes(b'x' * 1000)
    subprocess.run(['git', 'add', '.'], cwd=tmp_path, check=True)
    (tmp_path / 'untracked.txt').write_bytes(b'y' * 300)
    (tmp_path / '.gpu_wheels').mkdir()
    (tmp_path / '.gpu_wheels' / 'big.whl').write_bytes(b'z' * 5000)
    assert gpu_wheels.travelling_tree_bytes(tmp_path) == 1000 + 300 + len('/.gpu_wheels/\n')
    assert gpu_wheels.is_ignored(tmp_path, tmp_path / '.gpu_wheels')
    assert gpu_wheels.travel_error(40 << 20, 20 << 20, 64) is None
    assert gpu_wheels.travel_error(40 << 20, 30 << 20, 64) == (
        'working tree 40.0 MiB + wheels 30.0 MiB is 6.0 MiB over the 64 MiB that may travel to the GPU '
        'machine: drop wheels or untracked files')
