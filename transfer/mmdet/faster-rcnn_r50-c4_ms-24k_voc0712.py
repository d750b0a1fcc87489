# mmdetection 3.x: Pascal VOC 07+12, Faster R-CNN R50-C4, 24k iterations, multi-scale training (the seed page's
# VOC row, mmselfsup's benchmarks/mmdetection/voc0712 protocol after MoCo). Weights: export_weights.py --format mmdet.
# Departure: MoCo's extra normalisation after res5 (mmselfsup's ResLayerExtraNorm, not part of mmdetection) is not
# added here; the detectron2 config in this folder has it.
_base_ = "mmdet::pascal_voc/faster-rcnn_r50-caffe-c4_ms-18k_voc0712.py"

norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        style="pytorch",  # torchvision's stride-in-3x3 bottleneck (the exported weights' layout)
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint="backbone_mmdet.pth"),
    ),
    # In C4 the res5 stage lives in the RoI head: it must start from the exported weights too (the base config
    # would load supervised ImageNet ones there); its keys are the backbone's layer4.* keys.
    roi_head=dict(
        shared_head=dict(
            style="pytorch",
            norm_cfg=norm_cfg,
            norm_eval=False,
            init_cfg=dict(type="Pretrained", checkpoint="backbone_mmdet.pth"),
        )
    ),
)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=24000, val_interval=2000)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type="MultiStepLR", begin=0, end=24000, by_epoch=False, milestones=[18000, 22000], gamma=0.1),
]
custom_hooks = [dict(type="PreciseBNHook", num_samples=4096, interval=2000)]
