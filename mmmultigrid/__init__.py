"""mmmultigrid: multigrid training for mmaction2 1.x.

Importing the package (``custom_imports = dict(imports=['mmmultigrid'])``) first repairs the PyPI
OpenMMLab stack (:mod:`mmmultigrid.stack_fixes`), then registers the multigrid components. The data
flow follows the modules: plan -> sampler -> pipeline -> batchnorm -> hook.
"""
from . import stack_fixes

stack_fixes.apply()

from .batchnorm import GroupedBatchNorm3d, use_grouped_batchnorm  # noqa: E402
from .hook import MultigridHook  # noqa: E402
from .pipeline import ShapeVaryingPipeline  # noqa: E402
from .plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, build_plan  # noqa: E402
from .rawframes import ScaledRawFrameDecode  # noqa: E402
from .sampler import GridIndex, MultigridSampler  # noqa: E402

__version__ = '0.1.0'
__all__ = ['BaseShape', 'GridIndex', 'GridShape', 'GroupedBatchNorm3d', 'MultigridHook',
           'MultigridOptions', 'MultigridPlan', 'MultigridSampler', 'ScaledRawFrameDecode',
           'ShapeVaryingPipeline', 'build_plan', 'use_grouped_batchnorm']
