# mmsegmentation 1.x: Pascal VOC 2012 + Aug, FCN R50-D8, 512x512, 20k iterations (the seed page's VOC12 row; mmseg's
# protocol). The exported network has torchvision's 7x7 stem, so the backbone is mmseg's plain `ResNet` (not the
# deep-stem ResNetV1c of mmseg's supervised configs). Weights: export_weights.py --format mmdet.
_base_ = "mmseg::fcn/fcn_r50-d8_4xb4-20k_voc12aug-512x512.py"

model = dict(
    pretrained=None,
    backbone=dict(
        type="ResNet",
        depth=50,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint="backbone_mmdet.pth"),
    ),
)
