# mmsegmentation 1.x: Cityscapes, FCN R50-D8, 769x769, 40k iterations (the seed page's Cityscapes row). Plain
# `ResNet` backbone for the exported 7x7-stem weights. Weights: export_weights.py --format mmdet.
_base_ = "mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-769x769.py"

model = dict(
    pretrained=None,
    backbone=dict(
        type="ResNet",
        depth=50,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint="backbone_mmdet.pth"),
    ),
)
