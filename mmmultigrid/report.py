"""The plan as a table a person can read (logged by ``MultigridHook``, printed by ``tools/plan.py``)."""
from __future__ import annotations

from mmmultigrid.plan import MultigridPlan


def format_plan(plan: MultigridPlan, samples_per_rank: int | None = None) -> str:
    """One row per segment: epochs, LR stage, per-GPU batch, T x S, short cycle, LR factor."""
    base = plan.base
    header = ['epochs', 'stage', 'batch/GPU', 'T x S', 'short cycle (batch@crop)', 'LR x']
    if samples_per_rank is not None:
        header.append('iters/epoch')
    rows = []
    for s in plan.segments:
        shape = s.long_shape
        row = [f'{s.epoch_begin}-{s.epoch_end}', str(s.lr_stage), str(shape.batch_size),
               f'{shape.clip_len} x {shape.crop_size}',
               ', '.join(f'{g.batch_size}@{g.crop_size}' for g in s.shapes), f'{s.lr_factor:g}']
        if samples_per_rank is not None:
            row.append(str(s.batches_per_epoch(samples_per_rank)))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [
        f'Multigrid plan: base shape {base.batch_size} clips x {base.clip_len} frames (interval '
        f'{base.frame_interval}) x {base.crop_size}px per GPU on {plan.world_size} GPU(s); '
        f'{plan.baseline_max_epochs} baseline epochs -> {plan.max_epochs} '
        f'(epoch_factor {plan.options.epoch_factor:g}); long cycle '
        f'{"on" if plan.options.long_cycle else "off"}, short cycle '
        f'{"on" if plan.options.short_cycle else "off"}',
        '  '.join(h.ljust(w) for h, w in zip(header, widths)),
        '  '.join('-' * w for w in widths),
    ]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    schedule = ('LR x: relative to the optimizer LR, warmup aside; the LR steps at segment ends'
                if plan.step_schedule else
                "LR x: at each segment's first iteration; the LR follows the baseline's curve "
                'by iteration fraction times the batch multiplier')
    lines += [schedule] + [f'Note: {note}' for note in plan.notes] + [
              f'Predicted savings: {plan.iteration_speedup:.2f}x fewer iterations, '
              f'{plan.flop_speedup:.2f}x fewer FLOPs than the baseline']
    return '\n'.join(lines)
