# The synthetic baseline with multigrid training: the lines a user adds to their own config.
_base_ = ['./synthetic_r3d_baseline.py']

custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
train_dataloader = dict(
    batch_sampler=dict(type='MultigridSampler'),
    dataset=dict(pipeline=[dict(type='ShapeVaryingPipeline', transforms={{_base_.train_pipeline}})]))
custom_hooks = [dict(type='MultigridHook')]
