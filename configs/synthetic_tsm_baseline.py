# ResNet-18 TSM (a Recognizer2D) for the synthetic moving-shapes dataset: 8 segments per clip, one
# frame each, folded into the batch; the data, schedule and runtime of synthetic_r3d_baseline.py.
# Only motion separates the classes, so a 2D model needs TSM's temporal shift to learn them.
_base_ = ['./synthetic_r3d_baseline.py']

num_segments = 8
short_side = 54
crop_size = 48
crop_area_range = (0.7, 1.0)

model = dict(
    _delete_=True,
    type='Recognizer2D',
    backbone=dict(
        type='ResNetTSM',
        depth=18,
        num_segments=num_segments,
        shift_div=8,
        strides=(1, 2, 2, 1),  # total stride 16: 3x3 at 48 px
        pretrained=None,
        pretrained2d=False,
        norm_eval=False),
    cls_head=dict(
        type='TSMHead',
        num_classes=8,
        in_channels=512,
        num_segments=num_segments,
        spatial_type='avg',
        consensus=dict(type='AvgConsensus', dim=1),
        dropout_ratio=0.3,
        init_std=0.001,
        is_shift=True,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape='NCHW'))

train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=num_segments),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, short_side)),
    dict(type='RandomResizedCrop', area_range=crop_area_range),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=num_segments, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, short_side)),
    dict(type='CenterCrop', crop_size=short_side),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = val_pipeline
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader
