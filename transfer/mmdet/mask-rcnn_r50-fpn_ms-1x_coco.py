# mmdetection 3.x: COCO 2017, Mask R-CNN R50-FPN 1x, multi-scale training, SyncBN in the backbone, neck and heads
# (the seed page's COCO row, mmselfsup's benchmarks/mmdetection/coco protocol after MoCo).
_base_ = "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"

norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint="backbone_mmdet.pth"),
    ),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type="Shared4Conv1FCBBoxHead", conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)

# multi-scale training: shorter side drawn from 640..800 (step 32), longer side at most 1333
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomChoiceResize", scales=[(1333, side) for side in range(640, 801, 32)], keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
