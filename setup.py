"""mmmultigrid: multigrid training (Wu et al., CVPR 2020) for mmaction2 1.x."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='mmmultigrid',
    version='0.1.0',
    description='Multigrid training for mmaction2 1.x video models',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['mmmultigrid', 'mmmultigrid.*']),
    install_requires=read_requirements('requirements.txt'),
    extras_require={'test': read_requirements('requirements-dev.txt')},
    license='Apache-2.0',
)
