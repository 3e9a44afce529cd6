"""benchmarks/zoo_compat.py on tiny configs: trains, not applicable, shared model checks, the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'zoo_compat.py'
TRAIN_PIPELINE = """[
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]"""
R3D = "dict(backbone=dict(base_channels=4), cls_head=dict(num_classes={classes}, in_channels=32))"
TIMESFORMER = """dict(_delete_=True, type='Recognizer3D',
    backbone=dict(type='TimeSformer', num_frames=8, img_size=32, patch_size=8, embed_dims=16,
                  num_heads=2, num_transformer_layers=1, pretrained='https://nowhere/weights.pth'),
    cls_head=dict(type='TimeSformerHead', num_classes=4, in_channels=16),
    data_preprocessor=dict(type='ActionDataPreprocessor', format_shape='NCTHW'))"""


@pytest.fixture(scope='module')
def zoo() -> ModuleType:
    spec = importlib.util.spec_from_file_location('zoo_compat', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_config(path: Path, model: str) -> Path:
    """A training config in mmaction2's style (a ``train_pipeline`` variable), on the synthetic recipe."""
    path.write_text(f"_base_ = ['{REPO}/configs/synthetic_r3d_baseline.py']\n"
                    f'model = {model}\ntrain_pipeline = {TRAIN_PIPELINE}\n'
                    'train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n')
    return path


def write_test_only_config(path: Path) -> Path:
    """Like mmaction2's VideoMAE configs: a model and a test loader, nothing to train."""
    path.write_text("model = dict(type='Recognizer3D', backbone=dict(type='ResNet3d', depth=18), "
                    "cls_head=dict(type='I3DHead', num_classes=4, in_channels=512))\n"
                    "test_pipeline = [dict(type='PackActionInputs')]\n"
                    "test_dataloader = dict(batch_size=1, dataset=dict(type='VideoDataset', "
                    "ann_file='test.txt', pipeline=test_pipeline))\n")
    return path


def test_transformer_with_fixed_embeddings_trains(zoo: ModuleType, tmp_path: Path) -> None:
    """In process: the adapted TimeSformer runs a training step at every grid shape; no download."""
    result = zoo.check_one(training_config(tmp_path / 'tsf.py', TIMESFORMER), gpus=8, batch=1)
    assert result['status'] == 'trains', result
    assert {(s['clip_len'], s['crop_size']) for s in result['steps']} == {
        (2, 16), (2, 23), (4, 16), (4, 23), (4, 32), (8, 16), (8, 23)}  # all but the base shape
    assert result['adapted'][0].startswith('backbone (TimeSformer): pos_embed (4x4 patches')


def test_run_shares_model_checks_and_writes_the_table(zoo: ModuleType, tmp_path: Path) -> None:
    configs = [training_config(tmp_path / 'r3d_a.py', R3D.format(classes=4)),
               training_config(tmp_path / 'r3d_b.py', R3D.format(classes=7)),  # same model otherwise
               write_test_only_config(tmp_path / 'test_only.py')]
    out, markdown = tmp_path / 'zoo.json', tmp_path / 'zoo.md'
    zoo.main(['--configs', *map(str, configs), '--out', str(out), '--markdown', str(markdown),
              '--timeout', '120', '--batch', '2'])
    result = json.loads(out.read_text())
    entries = {Path(name).name: entry for name, entry in result['configs'].items()}
    assert entries['r3d_a.py']['status'] == entries['r3d_b.py']['status'] == 'trains'
    assert entries['r3d_a.py']['checked_by'] == entries['r3d_b.py']['checked_by'] == str(configs[0])
    assert entries['test_only.py']['status'] == 'not applicable'
    assert 'test-only config' in entries['test_only.py']['reason']
    assert result['summary'] == {tmp_path.name: {'trains': 2, 'not applicable': 1}}
    table = markdown.read_text()
    assert f'| {tmp_path.name} | 3 | 2 |  | 1 |  |  |  | not applicable: test-only config' in table


def test_a_model_error_is_refused_at_start_up_with_its_message(zoo: ModuleType,
                                                               tmp_path: Path) -> None:
    """The head takes 33 channels, the backbone gives 32: preflight's batch-mixing check, which runs
    the whole model, refuses it at start-up naming the error."""
    model = "dict(backbone=dict(base_channels=4), cls_head=dict(num_classes=4, in_channels=33))"
    result = zoo.check_one(training_config(tmp_path / 'bad_head.py', model), gpus=8, batch=2)
    assert result['status'] == 'refused'
    assert result['reason'].startswith('preflight: grid shape (batch ')
    assert 'mat1 and mat2 shapes cannot be multiplied' in result['reason']


def test_a_model_of_a_missing_package_needs_it(zoo: ModuleType) -> None:
    assert zoo.missing_package(ImportError('Please install timm>=0.9.0 to use this backbone.')) == (
        'ImportError: Please install timm>=0.9.0 to use this backbone.')
    registry = KeyError('MobileOneTSM is not in the mmaction::model registry. Please check whether '
                        'the value of `MobileOneTSM` is correct')
    assert zoo.missing_package(registry).startswith('MobileOneTSM is not registered: mmaction2 '
                                                    'registers it only where its optional package')
    assert zoo.missing_package(KeyError('train_pipeline')) is None


def test_a_check_past_its_time_limit_is_a_timeout(zoo: ModuleType, tmp_path: Path) -> None:
    args = zoo.parse_args(['--timeout', '1'])
    result = zoo.run_in_subprocess(training_config(tmp_path / 'r3d.py', R3D.format(classes=4)), args)
    assert result['status'] == 'timeout'
    assert result['reason'].startswith('the model check did not end within 1 s')
    assert result['reason'].endswith('ran: none')
