# The synthetic TSM with multigrid training: the lines a user adds to their own config. TSM fixes the
# segment count (num_segments), so the plan's long cycle is spatial only (see the plan's notes).
_base_ = ['./synthetic_tsm_baseline.py']

custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
train_dataloader = dict(
    batch_sampler=dict(type='MultigridSampler'),
    dataset=dict(pipeline=[dict(type='ShapeVaryingPipeline', transforms={{_base_.train_pipeline}})]))
custom_hooks = [dict(type='MultigridHook')]
