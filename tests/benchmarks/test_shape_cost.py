"""Smoke test of benchmarks/shape_cost.py: one model, tiny scale, one timed iteration; no timing checks."""
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / 'shape_cost.py'


@pytest.fixture(scope='module')
def shape_cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location('shape_cost', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_shape_keeps_batch_ratios(shape_cost: ModuleType) -> None:
    from mmmultigrid.plan import GridShape
    assert shape_cost.scale_shape(GridShape(64, 8, 158), 0.25, 8) == GridShape(8, 8, 40)
    with pytest.raises(ValueError, match='does not divide'):
        shape_cost.scale_shape(GridShape(8, 32, 224), 1.0, 3)


def test_tiny_run_covers_every_plan_shape(shape_cost: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / 'shape_cost.json'
    document = shape_cost.main(['--models', 'i3d', '--scale', '0.0625', '--warmup', '0', '--repeats', '1',
                                '--threads', '1', '--out', str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(document))
    assert {'torch', 'device', 'cpu_count'} <= set(document['machine'])
    assert document['settings']['scale'] == 0.0625 and document['settings']['batch_divisor'] == 8
    assert list(document['models']) == ['i3d']
    result = document['models']['i3d']
    expected, base = shape_cost.plan_shapes(shape_cost.MODEL_CONFIGS['i3d'][1])
    assert len(expected) == 8  # 4 long-cycle shapes with their short-cycle shapes, without repeats
    assert [row['full_shape'] for row in result['shapes']] == [vars(g) for g in expected]
    assert result['base_shape'] == vars(base)
    for row in result['shapes']:
        assert row['run_shape']['batch_size'] * 8 == row['full_shape']['batch_size']
        assert row['run_shape']['clip_len'] == row['full_shape']['clip_len']
        assert len(row['iteration_times_s']) == 1 and row['iteration_time_s'] > 0
        assert row['clips_per_s'] > 0 and row['volume_rel'] == pytest.approx(1, abs=0.1)
        assert {'time_rel', 'min_iteration_time_s', 'min_time_rel'} <= set(row)
        assert 'peak_memory_mib' not in row
    assert [r['time_rel'] for r in result['shapes'] if r['full_shape'] == vars(base)] == [1.0]


def test_amp_is_cuda_only_and_trains_under_autocast(shape_cost: ModuleType, cpu_amp: None) -> None:
    """``--amp`` is refused on CPU; its model trains under AmpOptimWrapper (bfloat16 here)."""
    import torch
    from mmengine.optim import AmpOptimWrapper

    from mmmultigrid.engine.step_time import random_batch, train_step
    from mmmultigrid.plan import GridShape

    with pytest.raises(SystemExit):
        shape_cost.parse_args(['--amp'])
    device = torch.device('cpu')
    model, optim_wrapper, num_classes = shape_cost.build_model(shape_cost.MODEL_CONFIGS['i3d'][0],
                                                               device, amp=True)
    assert isinstance(optim_wrapper, AmpOptimWrapper)
    dtypes = []
    model.backbone.conv1.conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    seconds, peak = train_step(model, optim_wrapper, random_batch(model, GridShape(2, 8, 32), num_classes))
    assert seconds > 0 and peak is None and dtypes == [torch.bfloat16]
