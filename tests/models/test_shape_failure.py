"""A grid shape the model cannot run: where it fails, and which one-axis mode runs."""
from __future__ import annotations

import pytest
import torch
from mmaction.registry import MODELS
from mmengine.registry import init_default_scope
from torch import nn

import mmmultigrid  # noqa: F401  (registers the components, repairs the stack)
from mmmultigrid.models.feature_map import measure_feature_maps
from mmmultigrid.models.shape_failure import ONE_AXIS_MODES, explain_failure, failing_module, one_axis_plan, \
    run_clip
from test_preflight import make_plan

BASE_T, BASE_S = 8, 32


@MODELS.register_module(force=True)
class FlatFC(nn.Module):
    """A convolution, then a fully connected layer over the flattened T' x H' x W' map (as C3D's fc6)
    or, with ``pool_space``, over T' only (H', W' pooled first): a model of fixed T."""

    def __init__(self, pool_space: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool3d((None, 1, 1)) if pool_space else nn.Identity()
        size = BASE_T // 2 * (1 if pool_space else (BASE_S // 2) ** 2)
        self.fc = nn.Linear(2 * size, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))[:, :, None, None, None]


@pytest.fixture(scope='module', autouse=True)
def mmaction_scope() -> None:
    init_default_scope('mmaction')


def recognizer(pool_space: bool) -> nn.Module:
    return MODELS.build(dict(type='Recognizer3D', backbone=dict(type='FlatFC', pool_space=pool_space),
                             cls_head=dict(type='I3DHead', in_channels=4, num_classes=2))).eval()


def test_failing_module_is_the_innermost_one_running() -> None:
    model = recognizer(pool_space=False)
    name, module = failing_module(model, lambda: run_clip(model, 4, 16))
    assert name == 'backbone.fc' and isinstance(module, nn.Linear)
    assert failing_module(model, lambda: run_clip(model, BASE_T, BASE_S)) is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_layer_of_the_base_shape_only_is_named_and_multigrid_refused() -> None:
    model = recognizer(pool_space=False)
    plan = make_plan(clip_len=BASE_T, crop_size=BASE_S)
    with pytest.raises(RuntimeError) as error:
        measure_feature_maps(model, plan)
    message = str(error.value)
    assert message.startswith('grid shape (batch 16, T=2, S=16) of epochs 0-3: the backbone cannot run '
                              'a clip of T=2, S=16 (mat1 and mat2 shapes cannot be multiplied')
    assert 'in backbone.fc (Linear; weight 4x2048, bias 4)' in message
    assert f'it runs at the base shape T={BASE_T}, S={BASE_S} but not at every grid shape' in message
    for mode, changes in ONE_AXIS_MODES:
        assert mode in message
    assert message.endswith('so this model cannot be trained with multigrid (train it without '
                            'MultigridHook, MultigridSampler and ShapeVaryingPipeline)')


def test_a_model_of_fixed_t_is_told_the_option_that_runs() -> None:
    model = recognizer(pool_space=True)
    plan = make_plan(clip_len=BASE_T, crop_size=BASE_S)
    message = explain_failure(model, plan, 2, 23, RuntimeError('size mismatch'))
    assert message == ('the backbone cannot run a clip of T=2, S=23 (size mismatch) in backbone.fc '
                       '(Linear; weight 4x8, bias 4), but runs at the base shape T=8, S=32; every grid '
                       'shape runs where only the crop varies (T fixed) (MultigridHook('
                       'long_cycle=False))')
    maps = measure_feature_maps(model, one_axis_plan(plan, dict(long_cycle=False)))  # it does run
    assert {(s.clip_len, s.crop_size) for s in maps} == {(8, 16), (8, 23), (8, 32)}


def test_a_model_that_fails_at_its_base_shape_says_so() -> None:
    model = recognizer(pool_space=False)
    plan = make_plan(clip_len=16, crop_size=BASE_S)  # base T=16: the fc takes T=8 only
    message = explain_failure(model, plan, 4, 16, RuntimeError('x'))
    assert 'it fails at the base shape T=16, S=32 too' in message
    assert 'check the model and the train pipeline' in message
