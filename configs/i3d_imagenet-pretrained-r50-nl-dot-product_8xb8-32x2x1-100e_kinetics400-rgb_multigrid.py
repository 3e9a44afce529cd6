# Multigrid version of mmaction2 1.2.0's i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb: the original, plus the multigrid lines.
_base_ = ['mmaction::recognition/i3d/i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb.py']

custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
train_dataloader = dict(
    batch_sampler=dict(type='MultigridSampler'),
    dataset=dict(pipeline=[dict(type='ShapeVaryingPipeline', transforms={{_base_.train_pipeline}})]))
custom_hooks = [dict(type='MultigridHook')]
