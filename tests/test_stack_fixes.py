"""Tests of mmmultigrid.stack_fixes (the PyPI OpenMMLab stack repairs)."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import io
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub

import mmmultigrid  # noqa: F401  (applies the fixes)
from mmmultigrid import stack_fixes
from jobs import write_fake_slurm
from runs import free_port

requires_no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason='CPU-only code path; CUDA is available here')

DATA_PREPROCESSOR_3D = dict(type='ActionDataPreprocessor', format_shape='NCTHW')
RECOGNIZERS = {
    'Recognizer2D/ResNet': dict(
        type='Recognizer2D',
        backbone=dict(type='ResNet', depth=18, pretrained=None),
        cls_head=dict(type='TSNHead', num_classes=4, in_channels=512),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCHW')),
    'Recognizer3D/ResNet3d': dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3d', depth=18, base_channels=8, pretrained=None,
                      pretrained2d=False),
        cls_head=dict(type='I3DHead', num_classes=4, in_channels=64),
        data_preprocessor=DATA_PREPROCESSOR_3D),
    'Recognizer3D/ResNet3dSlowFast': dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3dSlowFast', pretrained=None, resample_rate=4,
                      speed_ratio=4, channel_ratio=8,
                      slow_pathway=dict(type='resnet3d', depth=18, base_channels=8,
                                        pretrained=None, lateral=True, conv1_kernel=(1, 7, 7),
                                        conv1_stride_t=1, pool1_stride_t=1,
                                        inflate=(0, 0, 1, 1)),
                      fast_pathway=dict(type='resnet3d', depth=18, base_channels=8,
                                        pretrained=None, lateral=False, conv1_kernel=(5, 7, 7),
                                        conv1_stride_t=1, pool1_stride_t=1)),
        cls_head=dict(type='SlowFastHead', num_classes=4, in_channels=72),
        data_preprocessor=DATA_PREPROCESSOR_3D),
    'Recognizer3D/ResNet3dSlowOnly': dict(
        type='Recognizer3D',
        backbone=dict(type='ResNet3dSlowOnly', depth=18, base_channels=8, pretrained=None,
                      pretrained2d=False),
        cls_head=dict(type='I3DHead', num_classes=4, in_channels=64),
        data_preprocessor=DATA_PREPROCESSOR_3D),
    'Recognizer3D/X3D': dict(
        type='Recognizer3D',
        backbone=dict(type='X3D', gamma_w=1, gamma_b=2.25, gamma_d=1.0),
        cls_head=dict(type='X3DHead', num_classes=4, in_channels=432),
        data_preprocessor=DATA_PREPROCESSOR_3D),
    'RecognizerAudio/ResNetAudio': dict(
        type='RecognizerAudio',
        backbone=dict(type='ResNetAudio', depth=50, pretrained=None, in_channels=1),
        cls_head=dict(type='TSNAudioHead', num_classes=4, in_channels=1024)),
    'RecognizerGCN/STGCN': dict(
        type='RecognizerGCN',
        backbone=dict(type='STGCN', graph_cfg=dict(layout='coco', mode='stgcn_spatial')),
        cls_head=dict(type='GCNHead', num_classes=4, in_channels=256)),
    'MMRecognizer3D/RGBPoseConv3D': dict(
        type='MMRecognizer3D',
        backbone=dict(type='RGBPoseConv3D', pretrained=None),
        cls_head=dict(type='RGBPoseHead', num_classes=4, in_channels=[2048, 512])),
    'RecognizerOmni/OmniResNet': dict(
        type='RecognizerOmni',
        backbone=dict(type='OmniResNet'),
        cls_head=dict(type='OmniHead', image_classes=4, video_classes=4, in_channels=2048),
        data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW')),
}


@pytest.fixture(autouse=True)
def mmaction_scope() -> Iterator[None]:
    """Build registry types in mmaction's scope, as ``default_scope = 'mmaction'`` configs do."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmaction'):
        yield


# --------------------------------------------------------------------------- a. DRN stub


def test_apply_is_idempotent() -> None:
    meta_path = list(sys.meta_path)
    safe_globals = list(torch.serialization.get_safe_globals())
    dist_utils = importlib.import_module('mmengine.dist.utils')
    launchers = dist_utils._init_dist_pytorch, dist_utils._init_dist_slurm
    stack_fixes.apply()
    stack_fixes.apply()
    assert sys.meta_path == meta_path
    assert torch.serialization.get_safe_globals() == safe_globals
    assert (dist_utils._init_dist_pytorch, dist_utils._init_dist_slurm) == launchers
    from mmaction.models.heads.base import BaseHead
    head_loss = BaseHead.loss_by_feat
    stack_fixes.apply()
    assert BaseHead.loss_by_feat is head_loss


@pytest.mark.parametrize('name', sorted(RECOGNIZERS))
def test_mmaction_models_import_and_recognizers_build(name: str) -> None:
    import mmaction.models  # noqa: F401
    from mmaction.registry import MODELS

    model = MODELS.build(RECOGNIZERS[name])
    assert type(model).__name__ == RECOGNIZERS[name]['type']


def test_resnet3d_recognizer_forward() -> None:
    from mmaction.registry import MODELS

    model = MODELS.build(RECOGNIZERS['Recognizer3D/ResNet3d']).eval()
    with torch.no_grad():
        feats = model(torch.rand(2, 1, 3, 4, 32, 32), mode='tensor')
    assert feats.shape[:2] == (2, 64)  # backbone features


def test_drn_stub_is_installed_and_raises_clearly() -> None:
    from mmaction.models.localizers.drn.drn import DRN
    from mmaction.registry import MODELS

    assert stack_fixes.install_drn_stub()
    assert sum(isinstance(f, stack_fixes._DrnStubFinder) for f in sys.meta_path) == 1
    assert MODELS.get('DRN') is DRN
    with pytest.raises(NotImplementedError, match=r'wheel does not ship .*localizers/drn'):
        MODELS.build(dict(type='DRN', vocab_size=10))


def test_drn_stub_not_needed_where_drn_is_on_disk(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    drn = tmp_path / 'mmaction' / 'models' / 'localizers' / 'drn'
    drn.mkdir(parents=True)
    (drn / 'drn.py').write_text('')
    spec = importlib.machinery.ModuleSpec('mmaction', None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / 'mmaction')]
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: spec)
    assert not stack_fixes._drn_missing_on_disk()
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    assert not stack_fixes._drn_missing_on_disk()


def test_drn_finder_ignores_other_modules() -> None:
    finder = stack_fixes._DrnStubFinder()
    assert finder.find_spec('mmaction.models.localizers.bmn') is None
    assert finder.find_spec(stack_fixes._DRN_PACKAGE).submodule_search_locations is not None


# --------------------------------------------------------------------------- b. safe globals


def _saved(obj: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_message_hub_state_loads_with_weights_only_default() -> None:
    hub = MessageHub('test_safe_globals')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('eta', np.float64(3.0))
    loaded = torch.load(_saved(dict(message_hub=hub.state_dict())))  # torch's default weights_only
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == pytest.approx(1.0)
    assert loaded['message_hub']['runtime_info']['eta'] == 3.0


class _GetattrReduce:
    """Pickles as ``getattr(target, name)``."""

    def __init__(self, target: object, name: str) -> None:
        self.target, self.name = target, name

    def __reduce__(self) -> tuple:
        return getattr, (self.target, self.name)


@pytest.mark.parametrize('target, name', [(HistoryBuffer, '__init__'),
                                          (HistoryBuffer, '_set_default_statistics'),
                                          (np.ndarray, 'tofile')])
def test_checkpoint_getattr_is_restricted(target: object, name: str) -> None:
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(_saved(_GetattrReduce(target, name)))


def test_checkpoint_getattr_allows_history_buffer_statistics() -> None:
    assert torch.load(_saved(_GetattrReduce(HistoryBuffer, 'mean'))) is HistoryBuffer.mean


def test_add_checkpoint_safe_globals() -> None:
    class State:  # noqa: B903
        pass

    State.__module__, State.__qualname__ = __name__, 'State'
    globals()['State'] = State
    try:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(_saved(State()))
        stack_fixes.add_checkpoint_safe_globals([State])
        stack_fixes.add_checkpoint_safe_globals([State])
        assert torch.serialization.get_safe_globals().count(State) == 1
        assert isinstance(torch.load(_saved(State())), State)
    finally:
        del globals()['State']


# --------------------------------------------------------------------------- c. pkg_resources


def test_pkg_resources_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / 'derived.py'
    config.write_text("_base_ = ['mmaction::_base_/default_runtime.py']\n")
    with stack_fixes.pkg_resources_hint():
        assert Config.fromfile(str(config)).default_scope == 'mmaction'
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)
    with pytest.raises(ImportError, match=r"setuptools<81"):
        with stack_fixes.pkg_resources_hint():
            Config.fromfile(str(config))


def test_pkg_resources_hint_passes_other_errors() -> None:
    with pytest.raises(ModuleNotFoundError, match='not_a_module'):
        with stack_fixes.pkg_resources_hint():
            importlib.import_module('not_a_module')


# --------------------------------------------------------------------------- d. CPU distributed


@requires_no_cuda
def test_pytorch_launcher_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmengine.dist import init_dist

    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=r"env_cfg.dist_cfg.backend='nccl' needs CUDA"):
        init_dist('pytorch', backend='nccl')
    init_dist('pytorch', backend='gloo')
    try:
        assert torch.distributed.get_backend() == 'gloo'
        assert torch.distributed.get_world_size() == 1
    finally:
        torch.distributed.destroy_process_group()


@requires_no_cuda
def test_slurm_launcher_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As srun starts it: rank, world size and master address from ``SLURM_*`` (``scontrol`` on PATH)."""
    from mmengine.dist import init_dist

    # unset, but recorded by monkeypatch, so that what the launcher sets is undone afterwards
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR'):
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    bin_dir = write_fake_slurm(tmp_path / 'bin')
    for key, value in dict(SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NTASKS='1',
                           SLURM_NODELIST='127.0.0.1,127.0.0.2', MASTER_PORT=str(free_port()),
                           PATH=f'{bin_dir}:{os.environ["PATH"]}').items():
        monkeypatch.setenv(key, value)
    set_device = torch.cuda.set_device
    with pytest.raises(ValueError, match="init_backend='deepspeed' is not supported without CUDA"):
        init_dist('slurm', backend='gloo', init_backend='deepspeed')
    init_dist('slurm', backend='gloo')
    try:
        assert torch.distributed.get_backend() == 'gloo'
        assert (torch.distributed.get_rank(), torch.distributed.get_world_size()) == (0, 1)
        assert os.environ['MASTER_ADDR'] == '127.0.0.1'  # the first host of SLURM_NODELIST
        assert torch.cuda.set_device is set_device
    finally:
        torch.distributed.destroy_process_group()
    monkeypatch.setattr(stack_fixes, '_cpu_only', lambda: False)  # mmengine's own launcher then
    # its torch.cuda.set_device fails: a CPU build lacks the call, a CUDA build finds no driver
    with pytest.raises((AttributeError, RuntimeError), match='_cuda_setDevice|NVIDIA driver'):
        init_dist('slurm', backend='gloo')


@requires_no_cuda
def test_prepare_cpu_distributed() -> None:
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl')),
                      find_unused_parameters=True))
    assert stack_fixes.prepare_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False, find_unused_parameters=True)

    cfg = Config(dict(launcher='pytorch', model_wrapper_cfg=dict(device_ids=[0])))
    assert stack_fixes.prepare_cpu_distributed(cfg)
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'

    cfg = Config(dict(launcher='pytorch', model_wrapper_cfg=dict(type='NoSuchWrapper')))
    with pytest.raises(KeyError, match="model_wrapper_cfg.type='NoSuchWrapper'"):
        stack_fixes.prepare_cpu_distributed(cfg)

    cfg = Config(dict(launcher='none', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert not stack_fixes.prepare_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg


# --------------------------------------------------------------------------- e. bfloat16 class scores


def test_head_loss_takes_bfloat16_scores() -> None:
    from mmaction.registry import MODELS
    from mmaction.structures import ActionDataSample

    head = MODELS.build(dict(type='I3DHead', num_classes=4, in_channels=8))
    scores = torch.tensor([[4.0, 0, 0, 0], [0, 0, 3.0, 0]])
    samples = [ActionDataSample().set_gt_label(label) for label in (0, 1)]
    losses = head.loss_by_feat(scores.bfloat16(), samples)
    expected = head.loss_by_feat(scores, samples)
    assert float(losses['top1_acc']) == float(expected['top1_acc']) == 0.5
    torch.testing.assert_close(losses['loss_cls'], expected['loss_cls'])
