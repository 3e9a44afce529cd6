"""mmmultigrid: multigrid training for mmaction2 1.x.

Importing the package (``custom_imports = dict(imports=['mmmultigrid'])``) first repairs the PyPI
OpenMMLab stack (:mod:`mmmultigrid.stack_fixes`), then registers the multigrid components. The data
flow follows the layout, as mmaction2's does: the plan (``plan``, ``baseline``, ``lr_curve``) ->
``data`` (sampler, pipeline) -> ``models`` (batch norm, embeddings, segments) -> ``engine`` (the hook,
preflight). Everything a config or a user needs is importable from the package itself.
"""
from mmmultigrid import stack_fixes

stack_fixes.apply()

from mmmultigrid.plan import BaseShape, GridShape, MultigridOptions, MultigridPlan, build_plan  # noqa: E402
from mmmultigrid.data.pipeline import ShapeVaryingPipeline  # noqa: E402
from mmmultigrid.data.rawframes import ScaledRawFrameDecode  # noqa: E402
from mmmultigrid.data.sampler import GridIndex, MultigridSampler  # noqa: E402
from mmmultigrid.models.batchnorm import GroupedBatchNorm3d, use_grouped_batchnorm  # noqa: E402
from mmmultigrid.engine.hooks.multigrid_hook import MultigridHook  # noqa: E402
from mmmultigrid.engine.hooks.precise_bn_test_hook import PreciseBNTestHook  # noqa: E402

__version__ = '0.1.0'
__all__ = ['BaseShape', 'GridIndex', 'GridShape', 'GroupedBatchNorm3d', 'MultigridHook',
           'MultigridOptions', 'MultigridPlan', 'MultigridSampler', 'PreciseBNTestHook',
           'ScaledRawFrameDecode', 'ShapeVaryingPipeline', 'build_plan', 'use_grouped_batchnorm']
