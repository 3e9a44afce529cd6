"""mmmultigrid: multigrid training for mmaction2 1.x.

Importing the package (``custom_imports = dict(imports=['mmmultigrid'])``) first repairs the PyPI
OpenMMLab stack (:mod:`mmmultigrid.stack_fixes`), then registers the multigrid components.
"""
from . import stack_fixes

stack_fixes.apply()

__version__ = '0.1.0'
