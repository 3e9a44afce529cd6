"""StackingCollate: batches cross from loader workers as one tensor each and arrive as pseudo_collate's."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from mmaction.structures import ActionDataSample
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader, Dataset

import mmmultigrid  # noqa: F401  (repairs the stack)
from mmmultigrid.data.collate import LabelStackedSamples, StackedTensors, StackingCollate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
import collate_ipc  # noqa: E402


class Clips(Dataset):
    """Clips of ``shape`` whose values and labels follow the index; ``odd`` gives odd indices another
    shape."""

    def __init__(self, shape: tuple[int, ...], odd: tuple[int, ...] | None = None) -> None:
        self.shape, self.odd = shape, odd

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict:
        sample = ActionDataSample().set_gt_label(index % 7)
        sample.set_metainfo(dict(grid_shape=(index, 2, 3)))
        shape = self.odd if self.odd and index % 2 else self.shape
        return dict(inputs=torch.full(shape, index, dtype=torch.uint8), data_samples=sample)


def batches(dataset: Dataset, collate, workers: int) -> list[dict]:
    return list(DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=collate))


@pytest.mark.parametrize('workers', [0, 2])
def test_same_batches_as_pseudo_collate(workers: int) -> None:
    dataset = Clips((3, 4, 8, 8))
    for ours, theirs in zip(batches(dataset, StackingCollate(pseudo_collate), workers),
                            batches(dataset, pseudo_collate, 0)):
        assert isinstance(ours['inputs'], list) and isinstance(ours['data_samples'], list)
        assert len(ours['inputs']) == 16
        assert all(torch.equal(a, b) for a, b in zip(ours['inputs'], theirs['inputs']))
        assert [s.gt_label.tolist() for s in ours['data_samples']] == [
            s.gt_label.tolist() for s in theirs['data_samples']]
        assert [s.grid_shape for s in ours['data_samples']] == [
            s.grid_shape for s in theirs['data_samples']]
        if workers:  # one storage for the whole batch's clips, one for its labels
            assert len({t.untyped_storage().data_ptr() for t in ours['inputs']}) == 1
            assert len({s.gt_label.untyped_storage().data_ptr()
                        for s in ours['data_samples']}) == 1


def test_mixed_shapes_pass_unchanged() -> None:
    (batch, *_) = batches(Clips((3, 4, 8, 8), odd=(3, 2, 8, 8)), StackingCollate(pseudo_collate), 2)
    assert [t.shape[1] for t in batch['inputs'][:2]] == [4, 2]
    assert type(batch['inputs']) is list


def test_pickling_keeps_the_worker_side_batch() -> None:
    batch = StackingCollate(pseudo_collate)([Clips((3, 2, 4, 4))[i] for i in range(3)])
    assert isinstance(batch['inputs'], StackedTensors)
    assert isinstance(batch['data_samples'], LabelStackedSamples)
    copy = pickle.loads(pickle.dumps(batch))
    assert [s.gt_label.tolist() for s in batch['data_samples']] == [[0], [1], [2]]  # not emptied
    assert [s.gt_label.tolist() for s in copy['data_samples']] == [[0], [1], [2]]
    assert torch.equal(torch.stack(copy['inputs']), torch.stack(batch['inputs']))
    assert StackingCollate(lambda b: b)([1, 2]) == [1, 2]
    assert repr(StackingCollate(pseudo_collate)).startswith('StackingCollate(<function pseudo_collate')


def test_benchmark_reports_both_collates(tmp_path: Path) -> None:
    out = tmp_path / 'ipc.json'
    result = collate_ipc.main(['--cases', '4x3x2x8x8', '--batches', '2', '--out', str(out)])
    (row,) = result['cases']
    assert row['batch_size'] == 4 and row['clip_shape'] == [3, 2, 8, 8]
    assert row['pseudo_collate_ms'] > 0 and row['stacking_collate_ms'] > 0
    assert out.exists()
