"""Fixes that make the PyPI OpenMMLab stack (mmengine 0.10.7, mmaction2 1.2.0, torch >= 2.6) work.

:func:`apply` runs at ``import mmmultigrid``; it is idempotent and each fix is a no-op where its
upstream defect is absent:

* :func:`install_drn_stub` -- the mmaction2 1.2.0 wheel lacks ``mmaction/models/localizers/drn``,
  so ``import mmaction.models`` fails. A ``sys.meta_path`` finder provides a stub whose ``DRN``
  raises a clear error when built.
* :func:`allow_mmengine_checkpoint_globals` -- torch >= 2.6 loads with ``weights_only=True``;
  mmengine checkpoints hold ``HistoryBuffer`` and numpy objects. They are allow-listed (safe
  loading stays on); other modules add their own classes with :func:`add_checkpoint_safe_globals`.
* :func:`patch_launchers_for_cpu` -- mmengine's ``pytorch`` and ``slurm`` launchers call
  ``torch.cuda.set_device``, which fails on a CPU-only torch.
* :func:`patch_head_loss_for_bfloat16` -- mmaction2's ``BaseHead.loss_by_feat`` computes top-k accuracy
  from ``cls_scores.numpy()``, which fails for the bfloat16 scores of bfloat16 autocast.

Used by the tools rather than at import:

* :func:`pkg_resources_hint` -- setuptools >= 81 has no ``pkg_resources``, which mmengine needs to
  resolve ``mmaction::`` base configs. The requirements pin ``setuptools<81``; this context manager
  turns the bare ``ModuleNotFoundError`` into an error that says so. Nothing is patched, because a
  config without ``pkg::`` bases works without ``pkg_resources``.
* :func:`prepare_cpu_distributed` -- on a machine without CUDA, switch a distributed config to gloo
  and to a DDP wrapper without ``device_ids``.
* :func:`build_runner` -- the Runner of ``tools/train.py`` and ``tools/test.py``, with the above.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

_DRN_PACKAGE = 'mmaction.models.localizers.drn'
_DRN_MODULE = _DRN_PACKAGE + '.drn'
_DRN_MESSAGE = ('DRN is unavailable: the mmaction2 {version} PyPI wheel does not ship '
                '`mmaction/models/localizers/drn`, so mmmultigrid provides an empty stand-in. '
                'Install mmaction2 from source (https://github.com/open-mmlab/mmaction2) to use DRN.')


def apply() -> None:
    """Apply every import-time fix; each is idempotent and a no-op where its defect is absent."""
    install_drn_stub()
    allow_mmengine_checkpoint_globals()
    patch_launchers_for_cpu()
    patch_head_loss_for_bfloat16()


# --------------------------------------------------------------------------- a. DRN stub


def _drn_missing_on_disk() -> bool:
    """Whether mmaction is installed but its ``localizers/drn`` package is not (without importing it)."""
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return False
    return not any((Path(loc) / 'models' / 'localizers' / 'drn' / 'drn.py').is_file()
                   for loc in spec.submodule_search_locations)


class _DrnStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads a stand-in for the two DRN modules the mmaction2 1.2.0 wheel lacks.

    Appended to ``sys.meta_path``, so a real ``drn`` package on disk is always found first.
    """

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in (_DRN_PACKAGE, _DRN_MODULE):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname == _DRN_PACKAGE)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # default module creation

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = 'Stand-in from mmmultigrid.stack_fixes: the mmaction2 wheel lacks DRN.'
        if module.__name__ == _DRN_MODULE:
            module.DRN = _make_drn_stub()
            module.__all__ = ['DRN']


def _make_drn_stub() -> type:
    """Build the ``DRN`` stand-in and register it in mmaction's ``MODELS`` like the real one."""
    import mmaction
    from mmaction.registry import MODELS

    message = _DRN_MESSAGE.format(version=mmaction.__version__)

    class DRN:
        """Stand-in for mmaction2's DRN localizer, which the PyPI wheel does not ship."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError(message)

    DRN.__module__ = _DRN_MODULE
    MODELS.register_module(name='DRN', module=DRN, force=True)
    return DRN


def install_drn_stub() -> bool:
    """Provide ``mmaction.models.localizers.drn`` where the installed mmaction lacks it.

    Returns whether the stub finder is installed (it already was, or was added now).
    """
    if any(isinstance(finder, _DrnStubFinder) for finder in sys.meta_path):
        return True
    if not _drn_missing_on_disk():
        return False
    sys.meta_path.append(_DrnStubFinder())
    return True


# --------------------------------------------------------------------------- b. safe globals


def _mmengine_checkpoint_globals() -> list[Any]:
    """What a mmengine 0.10.7 Runner checkpoint pickles besides tensors and builtin containers.

    Found by saving a Runner checkpoint (SGD + MultiStepLR, message hub with logged scalars) and
    listing ``torch.serialization.get_unsafe_globals_in_checkpoint``; the numpy ``DType`` classes
    are the types of the unpickled dtypes, which torch's ``BUILD`` also checks.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = importlib.import_module(
        'numpy._core.multiarray' if hasattr(np, '_core') else 'numpy.core.multiarray')
    return [
        HistoryBuffer,              # MessageHub.log_scalars
        np.ndarray,                 # HistoryBuffer._log_history / _count_history
        multiarray._reconstruct,
        np.dtype,
        type(np.dtype(np.float64)),
        type(np.dtype(np.int64)),
        multiarray.scalar,          # numpy scalars in MessageHub.runtime_info
        (_history_buffer_getattr, 'builtins.getattr'),
    ]


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Restricted ``getattr`` for unpickling ``HistoryBuffer._statistics_methods``.

    Pickle protocol 2 stores the functions ``HistoryBuffer.min`` etc. as ``getattr(HistoryBuffer,
    'min')``. Allow-listing the real ``builtins.getattr`` would let a checkpoint reach any attribute
    (e.g. ``__globals__``) of any allowed object, so only public functions of ``HistoryBuffer`` pass.
    """
    import pickle

    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and not name.startswith('_'):
        value = getattr(obj, name, None)
        if inspect.isfunction(value):
            return value
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) in a checkpoint: only public HistoryBuffer '
        'methods are allowed (mmmultigrid.stack_fixes).')


def add_checkpoint_safe_globals(objects: Iterable[Any]) -> None:
    """Allow-list classes/functions for ``torch.load(weights_only=True)`` (no-op on torch < 2.4).

    Other modules call this for state they put into checkpoints (e.g. hook state).
    """
    import torch.serialization

    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return
    new = [obj for obj in objects if obj not in torch.serialization.get_safe_globals()]
    if new:
        add(new)


def allow_mmengine_checkpoint_globals() -> None:
    """Let mmengine ``Runner.resume`` load its own checkpoints under torch's safe-loading default."""
    add_checkpoint_safe_globals(_mmengine_checkpoint_globals())


# --------------------------------------------------------------------------- c. pkg_resources


@contextlib.contextmanager
def pkg_resources_hint() -> Iterator[None]:
    """Re-raise a missing ``pkg_resources`` (setuptools >= 81) as an error that says what to do.

    mmengine 0.10.7 imports ``pkg_resources`` to resolve ``pkg::`` base configs such as
    ``_base_ = ['mmaction::_base_/default_runtime.py']``. Wrap ``Config.fromfile`` in it.
    """
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name != 'pkg_resources':
            raise
        import setuptools

        raise ImportError(
            'mmengine 0.10.7 needs `pkg_resources` to resolve `mmaction::`-style base configs, but '
            f'setuptools {setuptools.__version__} no longer provides it; '
            "run `pip install 'setuptools<81'` (pinned in requirements.txt).") from err


# --------------------------------------------------------------------------- d. CPU distributed


def _cpu_only() -> bool:
    """Whether no accelerator the mmengine launchers know about is present."""
    import torch
    from mmengine.device import is_mlu_available, is_musa_available, is_npu_available

    return not (torch.cuda.is_available() or is_mlu_available() or is_npu_available()
                or is_musa_available())


# mmengine.dist.utils launchers that end in torch.cuda.set_device(local_rank) + init_process_group
_CUDA_LAUNCHERS = ('_init_dist_pytorch', '_init_dist_slurm')


def patch_launchers_for_cpu() -> bool:
    """Make mmengine's ``pytorch`` and ``slurm`` launchers skip ``torch.cuda.set_device`` without CUDA.

    ``mmengine.dist.utils.init_dist`` looks the launchers up at call time, so wrapping the module
    attributes suffices. Each still reads its environment (``RANK``/``WORLD_SIZE``, or
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_NODELIST``) and sets ``MASTER_ADDR`` etc. as upstream; with
    an accelerator the originals run unchanged. Returns whether the wrappers are installed.
    """
    import mmengine.dist.utils as dist_utils

    for name in _CUDA_LAUNCHERS:
        original = getattr(dist_utils, name)
        if not getattr(original, '_mmmultigrid_cpu', False):
            setattr(dist_utils, name, _without_cuda_set_device(original))
    return True


def _without_cuda_set_device(launcher: Callable[..., None]) -> Callable[..., None]:
    """``launcher``, with ``torch.cuda.set_device`` a no-op where there is no accelerator."""

    @functools.wraps(launcher)
    def cpu_safe_launcher(backend: str, init_backend: str = 'torch', **kwargs: Any) -> None:
        if not _cpu_only():
            launcher(backend, init_backend=init_backend, **kwargs)
            return
        if backend == 'nccl':
            raise ValueError(
                "env_cfg.dist_cfg.backend='nccl' needs CUDA, which this machine lacks; use "
                "backend='gloo' (tools/train.py does so via stack_fixes.prepare_cpu_distributed).")
        if init_backend != 'torch':
            raise ValueError(f'init_backend={init_backend!r} is not supported without CUDA; '
                             "use init_backend='torch'.")
        import torch

        set_device = torch.cuda.set_device
        torch.cuda.set_device = lambda device: None
        try:
            launcher(backend, init_backend=init_backend, **kwargs)
        finally:
            torch.cuda.set_device = set_device

    cpu_safe_launcher._mmmultigrid_cpu = True  # type: ignore[attr-defined]
    return cpu_safe_launcher


def prepare_cpu_distributed(cfg: Any) -> bool:
    """Adapt a distributed config (``cfg.launcher != 'none'``) to a machine without CUDA.

    Sets ``env_cfg.dist_cfg.backend='gloo'`` (where it is ``'nccl'`` or unset) and a DDP
    ``model_wrapper_cfg`` with ``device_ids=None`` (DDP rejects device ids for a CPU module).
    Returns whether the config was changed; with CUDA or ``launcher='none'`` it is left alone.
    """
    import torch
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel

    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return False
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg') is None:
        cfg.env_cfg.dist_cfg = dict()
    if cfg.env_cfg.dist_cfg.get('backend', 'nccl') == 'nccl':
        cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper_cfg = cfg.get('model_wrapper_cfg')
    if wrapper_cfg is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        return True
    wrapper_type = wrapper_cfg.get('type', 'MMDistributedDataParallel')
    wrapper_cls = MODEL_WRAPPERS.get(wrapper_type) if isinstance(wrapper_type, str) else wrapper_type
    if wrapper_cls is None:
        raise KeyError(f'model_wrapper_cfg.type={wrapper_type!r} is not a registered model wrapper.')
    if issubclass(wrapper_cls, DistributedDataParallel):
        wrapper_cfg['device_ids'] = None
    return True


def build_runner(cfg: Any) -> Any:
    """The Runner of a merged tool config, after :func:`prepare_cpu_distributed` (train/test tools)."""
    from mmengine.runner import Runner

    prepare_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        from mmaction.registry import RUNNERS

        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


# --------------------------------------------------------------------------- e. bfloat16 class scores


def patch_head_loss_for_bfloat16() -> bool:
    """Give mmaction2's ``BaseHead.loss_by_feat`` float32 class scores where they are bfloat16.

    Under bfloat16 autocast (``AmpOptimWrapper(dtype='bfloat16')``, on GPU or CPU) the head's scores are
    bfloat16, and ``loss_by_feat`` turns them into a numpy array for its top-k accuracy, which fails with
    ``TypeError: Got unsupported ScalarType BFloat16``. With the wrapper the loss and accuracy are
    computed from the same scores in float32. Returns whether the wrapper is installed.
    """
    import torch
    from mmaction.models.heads.base import BaseHead

    original = BaseHead.loss_by_feat
    if getattr(original, '_mmmultigrid_bf16', False):
        return True

    @functools.wraps(original)
    def loss_by_feat(self: Any, cls_scores: Any, data_samples: Any) -> dict:
        if cls_scores.dtype == torch.bfloat16:
            cls_scores = cls_scores.float()
        return original(self, cls_scores, data_samples)

    loss_by_feat._mmmultigrid_bf16 = True  # type: ignore[attr-defined]
    BaseHead.loss_by_feat = loss_by_feat
    return True
