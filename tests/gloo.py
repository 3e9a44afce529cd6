"""Functions run on several gloo processes, spawned from a test (torch.multiprocessing)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(fn: Callable[..., None], *args: Any, world_size: int = 2) -> None:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` new processes joined by a gloo group.

    ``fn`` must be a module-level function (the processes are spawned); it reports through files.
    An error in any process fails the call with that process's traceback. The processes meet through
    a file, not a TCP port picked in advance, which another socket may take in between.
    """
    with tempfile.TemporaryDirectory() as folder:
        rendezvous = Path(folder) / 'rendezvous'
        mp.spawn(_join_and_call, args=(world_size, rendezvous.as_uri(), fn, args), nprocs=world_size)


def _join_and_call(rank: int, world_size: int, init_method: str, fn: Callable[..., None],
                   args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init_method, rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        # Both ranks done before either closes its connections: a rank that tore down the group while
        # the other still had gloo I/O in flight aborted it (`terminate called without an active
        # exception`, SIGABRT) in about 1 run of 5.
        dist.barrier()
    finally:
        dist.destroy_process_group()
