# PySlowFast's Kinetics-400 SlowFast R50 8x8 stepwise multigrid recipe (the worked example of the paper's
# reference code): mmaction2's steplr SlowFast 8x8 with PySlowFast's 239 baseline epochs.
_base_ = ['./slowfast_r50_8xb8-8x8x1-steplr-256e_kinetics400-rgb_multigrid.py']

max_epochs = 239
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=34,
         convert_to_iter_based=True),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[94, 154, 196],
         gamma=0.1)
]
