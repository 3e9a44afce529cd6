"""torch.compile of the backbone: every grid shape of a plan compiled, no graph break, no eager fall-back."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mmengine.registry import init_default_scope
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch._dynamo.utils import counters

from mmmultigrid.baseline import plan_from_config
from mmmultigrid.models.batchnorm import use_grouped_batchnorm
from mmmultigrid.models.compile import compile_backbone
from mmmultigrid.plan import GridShape
from mmmultigrid.data.synthetic_videos import SyntheticDataset
from runs import build_runner_in_process, write_tiny_multigrid_config
from test_multigrid_hook import iterations, read_trace
from test_preflight import make_plan, tiny_r3d


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Empty dynamo caches and counters for each test."""
    init_default_scope('mmaction')
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def train_forward_backward(model: torch.nn.Module, shapes: list[GridShape],
                           dtype: torch.dtype = torch.float32) -> None:
    for shape in shapes:
        inputs = torch.randn(shape.batch_size, 1, 3, shape.clip_len, shape.crop_size, shape.crop_size)
        with torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32):
            feats = model.extract_feat(inputs)[0]
        feats.float().sum().backward()


def assert_compiled_without_fallback(graphs: int) -> None:
    """Dynamo made ``graphs`` graphs, broke none and never gave up (recompile limit, skipped frame)."""
    assert counters['stats']['unique_graphs'] == graphs
    assert not counters['graph_break']
    assert not counters['unimplemented']


@pytest.mark.parametrize('dynamic, dtype, graphs', [
    (False, torch.bfloat16, 8),  # static, under bfloat16 autocast (--amp): one graph per grid shape
    (None, torch.float32, 5),  # automatic dynamic shapes: fewer graphs
])
def test_every_grid_shape_compiles_without_falling_back(dynamic: bool | None, dtype: torch.dtype,
                                                        graphs: int, cpu_amp: None) -> None:
    model = tiny_r3d()
    use_grouped_batchnorm(model, 8)
    shapes = list(make_plan().shape_segments())
    assert len(shapes) == 8
    line = compile_backbone(model, len(shapes), dict(backend='eager', dynamic=dynamic))
    assert ('static shapes' if dynamic is False else 'automatic dynamic') in line
    assert 'recompile_limit=8' in line
    model.train()
    for _ in range(2):  # the second round reuses the graphs
        train_forward_backward(model, shapes, dtype)
    assert_compiled_without_fallback(graphs)
    model.eval()
    with torch.no_grad():  # evaluation runs eagerly, whatever its batch
        model.extract_feat(torch.randn(3, 1, 3, 8, 32, 32))
    assert_compiled_without_fallback(graphs)


def test_a_shape_beyond_the_limit_raises_instead_of_running_eagerly() -> None:
    model = tiny_r3d()
    shapes = [GridShape(2, 4, 16), GridShape(1, 4, 16), GridShape(2, 4, 32)]
    compile_backbone(model, 2, dict(backend='eager'))
    model.train()
    train_forward_backward(model, shapes[:2])
    with pytest.raises(FailOnRecompileLimitHit):
        train_forward_backward(model, shapes[2:])


def test_options_that_would_allow_a_fallback_are_refused() -> None:
    with pytest.raises(ValueError, match=r'compile\.fullgraph=False: MultigridHook sets fullgraph'):
        compile_backbone(tiny_r3d(), 8, dict(fullgraph=False))
    with pytest.raises(ValueError, match=r'compile\.recompile_limit=8'):
        compile_backbone(tiny_r3d(), 8, dict(recompile_limit=8))
    with pytest.raises(ValueError, match=r"compile\.dynamic must be True, False or None, got 'yes'"):
        compile_backbone(tiny_r3d(), 8, dict(dynamic='yes'))
    with pytest.raises(TypeError, match='model.backbone'):
        compile_backbone(torch.nn.Linear(2, 2), 8, True)


def test_compile_true_in_training_compiles_the_backbone_at_every_grid_shape(
        synthetic_dataset: SyntheticDataset, tmp_path: Path) -> None:
    """``compile`` in the config: the hook compiles the backbone instead of mmengine's train_step."""
    config = write_tiny_multigrid_config(tmp_path / 'compiled.py', synthetic_dataset)
    runner = build_runner_in_process(config, tmp_path / 'work', {'compile': dict(backend='eager')})
    runner.train()
    log = next((tmp_path / 'work').glob('*/*.log')).read_text()
    assert 'MultigridHook: torch.compile: the backbone (ResNet3d) is compiled for training with ' \
        'static shapes (one graph per grid shape)' in log
    assert 'train_step' not in vars(runner.model)
    plan = plan_from_config(runner.cfg, 1)
    trace = iterations(read_trace(tmp_path / 'work' / 'multigrid_trace.rank0.jsonl'))
    shapes = list(plan.shape_segments())
    assert {(r['batch_size'], r['clip_len'], r['crop_size']) for r in trace} == {
        (g.batch_size, g.clip_len, g.crop_size) for g in shapes}
    assert_compiled_without_fallback(len(shapes))
