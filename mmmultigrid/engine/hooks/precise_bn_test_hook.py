"""``PreciseBNTestHook``: BN statistics recomputed from training batches before testing.

Weights trained at one shape and tested at another keep the BN running statistics of the shape they
were trained at; the activations of the other shape can have other means and variances, and the test
then measures the mismatch rather than the weights (a shape probe at 4 frames: 6.5% at the base shape
with its own statistics, 36.3% with statistics recomputed there; benchmarks/RESULTS.md). This hook
recomputes them (:func:`~mmmultigrid.models.precise_bn.update_bn_stats`) from ``num_batches`` batches
of the config's ``train_dataloader`` after the checkpoint is loaded, as ``MultigridHook(precise_bn=N)``
does before a multigrid run's validations. ``tools/shape_probe.py`` tests each probe's weights at the
base shape with it.
"""
from __future__ import annotations

import itertools
import time

from mmaction.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmmultigrid.models.precise_bn import recompute_from_training_forward


@HOOKS.register_module()
class PreciseBNTestHook(Hook):
    """Recompute BN running statistics from ``num_batches`` training batches before testing.

    Args:
        num_batches: Batches of ``train_dataloader`` (its pipeline and batch size) to recompute from.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches: int = 32) -> None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f'PreciseBNTestHook.num_batches must be an int >= 1, got {num_batches!r}')
        self.num_batches = num_batches

    def before_test(self, runner) -> None:
        if not runner.cfg.get('train_dataloader'):
            raise ValueError('PreciseBNTestHook recomputes BN statistics from training batches: the '
                             'config needs train_dataloader')
        loader = runner.build_dataloader(runner.cfg.train_dataloader)
        start = time.perf_counter()
        # the BN layers that training updates: those in training mode after train() (norm_eval kept)
        modes = [(m, m.training) for m in runner.model.modules()]
        runner.model.train()
        try:
            layers, count = recompute_from_training_forward(
                runner.model, itertools.islice(loader, self.num_batches))
        finally:
            for module, training in modes:
                module.training = training
        print_log(f'PreciseBNTestHook: running statistics of {len(layers)} BN layers recomputed from '
                  f'{count} training batches ({time.perf_counter() - start:.1f} s)', logger='current')

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_batches={self.num_batches})'
