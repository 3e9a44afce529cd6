# Slim ResNet3d-18 Recognizer3D for the synthetic moving-shapes dataset, sized for a few CPU cores.
# Make the data with `python -m mmmultigrid.data.synthetic_videos data/synthetic` (8 classes by default).
# Every number is a top-level variable so that derived configs (and --cfg-options) can override it.
custom_imports = dict(imports=['mmmultigrid'], allow_failed_imports=False)
default_scope = 'mmaction'

# ----------------------------------------------------------------------------- data
data_root = 'data/synthetic'
ann_file_train = data_root + '/train_list.txt'
ann_file_val = data_root + '/val_list.txt'
num_classes = 8
clip_len = 16
frame_interval = 2
short_side = 80  # frames are resized to this short side before cropping
crop_size = 64
crop_area_range = (0.7, 1.0)
batch_size = 8
val_batch_size = 8
num_workers = 2

# ----------------------------------------------------------------------------- model
base_channels = 16
depth = 18
dropout_ratio = 0.3

# ----------------------------------------------------------------------------- schedule
max_epochs = 12
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
lr_milestones = [8, 11]
lr_gamma = 0.1
seed = 0

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='ResNet3d',
        depth=depth,
        base_channels=base_channels,
        pretrained=None,
        pretrained2d=False,
        conv1_kernel=(3, 7, 7),
        conv1_stride_t=1,
        pool1_stride_t=1,
        inflate=(1, 1, 1, 1),
        conv_cfg=dict(type='Conv3d'),
        norm_cfg=dict(type='BN3d', requires_grad=True),
        norm_eval=False,
        zero_init_residual=False),
    cls_head=dict(
        type='I3DHead',
        num_classes=num_classes,
        in_channels=base_channels * 8,
        spatial_type='avg',
        dropout_ratio=dropout_ratio,
        init_std=0.01,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape='NCTHW'))

dataset_type = 'VideoDataset'
file_client_args = dict(io_backend='disk')
train_pipeline = [
    dict(type='DecordInit', **file_client_args),
    dict(type='SampleFrames', clip_len=clip_len, frame_interval=frame_interval, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, short_side)),
    dict(type='RandomResizedCrop', area_range=crop_area_range),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    # No Flip: a horizontal flip turns a 'right' clip into a 'left' one, i.e. flips the label.
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [
    dict(type='DecordInit', **file_client_args),
    dict(type='SampleFrames', clip_len=clip_len, frame_interval=frame_interval, num_clips=1,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, short_side)),
    dict(type='CenterCrop', crop_size=short_side),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = val_pipeline

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=num_workers,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root + '/videos'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=val_batch_size,
    num_workers=num_workers,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root + '/videos'),
        pipeline=val_pipeline,
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='AccMetric')
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=lr, momentum=momentum, weight_decay=weight_decay),
    clip_grad=dict(max_norm=40, norm_type=2))
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=lr_milestones,
         gamma=lr_gamma)
]
# Batch size the lr above was tuned for (1 process x batch_size); used by --auto-scale-lr.
auto_scale_lr = dict(enable=False, base_batch_size=batch_size)

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, ignore_last=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    sync_buffers=dict(type='SyncBuffersHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
randomness = dict(seed=seed, diff_rank_seed=False, deterministic=False)

log_processor = dict(type='LogProcessor', window_size=10, by_epoch=True)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='ActionVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
