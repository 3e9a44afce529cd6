"""Time for a batch to cross from a DataLoader worker to the main process, per collate function.

A dataset of constant clips (no decoding) with mmaction2 data samples, one worker, ``--batches`` batches
after one warm-up batch, for each (batch size, clip shape) of ``--cases``: mmengine's ``pseudo_collate``
(every clip and every label its own shared-memory segment) against ``StackingCollate`` around it (one
segment for the clips, one for the labels), which ``MultigridHook`` installs.

Usage::

    python benchmarks/collate_ipc.py --out benchmarks/results/collate_ipc_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader, Dataset

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from loader_throughput import machine  # noqa: E402  (also repairs the OpenMMLab stack)
from mmaction.structures import ActionDataSample  # noqa: E402
from mmmultigrid.data.collate import StackingCollate  # noqa: E402

#: The largest and the base batch of the reference Kinetics plan and of the synthetic plan.
CASES = ('128x3x8x112x112', '8x3x32x224x224', '128x3x4x32x32', '8x3x16x64x64')


class ConstantClips(Dataset):
    """Clips of one shape filled with their index, each with a labelled data sample."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __len__(self) -> int:
        return 1 << 20

    def __getitem__(self, index: int) -> dict:
        sample = ActionDataSample().set_gt_label(index % 400)
        return dict(inputs=torch.full(self.shape, index % 251, dtype=torch.uint8), data_samples=sample)


def ms_per_batch(batch_size: int, shape: tuple[int, ...], collate, batches: int) -> float:
    loader = DataLoader(ConstantClips(shape), batch_size=batch_size, num_workers=1, collate_fn=collate,
                        persistent_workers=True)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 1000 * (time.perf_counter() - start) / batches


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES), help='BxCxTxHxW')
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--out', type=Path)
    args = parser.parse_args(argv)
    rows = []
    print('| batch x clip | pseudo_collate ms/batch | StackingCollate ms/batch |\n|---|---|---|')
    for case in args.cases:
        batch_size, *shape = (int(n) for n in case.split('x'))
        plain = ms_per_batch(batch_size, tuple(shape), pseudo_collate, args.batches)
        stacked = ms_per_batch(batch_size, tuple(shape), StackingCollate(pseudo_collate), args.batches)
        rows.append(dict(batch_size=batch_size, clip_shape=shape, pseudo_collate_ms=plain,
                         stacking_collate_ms=stacked))
        print(f'| {case} | {plain:.1f} | {stacked:.1f} |')
    result = dict(machine=machine(), batches=args.batches, cases=rows)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + '\n')
    return result


if __name__ == '__main__':
    main()
