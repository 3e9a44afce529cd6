# Multigrid version of mmaction2 1.2.0's slowfast_r50_8xb8-4x16x1-256e_kinetics400-rgb: the original, plus the multigrid lines.
_base_ = ['mmaction::recognition/slowfast/slowfast_r50_8xb8-4x16x1-256e_kinetics400-rgb.py']

custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
train_dataloader = dict(
    batch_sampler=dict(type='MultigridSampler'),
    dataset=dict(pipeline=[dict(type='ShapeVaryingPipeline', transforms={{_base_.train_pipeline}})]))
custom_hooks = [dict(type='MultigridHook')]
