"""One shared-memory block per batch, not one per clip, between loader workers and training.

A torch ``DataLoader`` worker hands every tensor of a batch to the main process through its own
shared-memory segment and file descriptor. With mmengine's ``pseudo_collate`` a batch is a list of clip
tensors and a list of data samples, each holding a label tensor: two segments per clip, whatever the
clip's size. At the base shape that is noise; at multigrid's 128-clip batches of small clips it costs
more than loading them (``benchmarks/collate_ipc.py``).
Every clip of a multigrid batch has the same shape, so :class:`StackingCollate` wraps the loader's collate
function and marks its lists so that they cross the process boundary as one stacked tensor each and
arrive as lists of views of it: the same values, types and layout the model's data preprocessor gets
from ``pseudo_collate``. ``MultigridHook`` wraps the train loader's collate function at start-up.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def _unstack(stacked: torch.Tensor) -> 'StackedTensors':
    return StackedTensors(stacked.unbind(0))


def stack_shared(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)`` written straight into new shared memory (as torch's ``default_collate``
    does in a worker): one copy of the bytes, as sending the tensors one by one would make."""
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


class StackedTensors(list):
    """A list of equal-shape tensors that pickles as one stacked tensor (unpickled: views of it)."""

    def __reduce__(self):
        return _unstack, (stack_shared(list(self)),)


def _relabel(samples: list, labels: torch.Tensor) -> 'LabelStackedSamples':
    for sample, label in zip(samples, labels.unbind(0)):
        sample.gt_label = label
    return LabelStackedSamples(samples)


class LabelStackedSamples(list):
    """Data samples whose equal-shape ``gt_label`` tensors pickle as one stacked tensor."""

    def __reduce__(self):
        bare = []
        for sample in self:
            sample = sample.clone()
            del sample.gt_label
            bare.append(sample)
        return _relabel, (bare, stack_shared([s.gt_label for s in self]))


def _same_shape_tensors(items: Any) -> bool:
    return (isinstance(items, list) and len(items) > 1 and all(isinstance(t, torch.Tensor) for t in items)
            and len({(t.shape, t.dtype) for t in items}) == 1)


class StackingCollate:
    """Wraps a collate function: its ``inputs`` (equal-shape tensors) and its data samples' ``gt_label``
    tensors travel from a worker as one tensor each. Batches of other structures pass unchanged."""

    def __init__(self, collate_fn: Callable[[list], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: list) -> Any:
        out = self.collate_fn(batch)
        if not isinstance(out, dict):
            return out
        if _same_shape_tensors(out.get('inputs')):
            out['inputs'] = StackedTensors(out['inputs'])
        samples = out.get('data_samples')
        if isinstance(samples, list) and all(hasattr(s, 'clone') and 'gt_label' in s for s in samples) \
                and _same_shape_tensors([s.gt_label for s in samples]):
            out['data_samples'] = LabelStackedSamples(samples)
        return out

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.collate_fn!r})'
