"""detectron2 training entry for the transfer configs in this folder (needs detectron2; not installed by
requirements.txt). MoCo's protocol adds a normalisation layer after res5 in the C4 box head; this registers that
head as Res5ROIHeadsExtraNorm and otherwise runs detectron2's DefaultTrainer.

    python transfer/detectron2/train_net.py --config-file transfer/detectron2/pascal_voc_R_50_C4_24k.yaml \
        --num-gpus 8 MODEL.WEIGHTS runs/x/export/backbone_detectron2.pkl OUTPUT_DIR runs/x/voc07+12
"""

from __future__ import annotations

import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """The C4 box head with one more normalisation layer (the backbone's norm type) after the res5 stage."""

    @classmethod
    def _build_res5_block(cls, cfg):
        stage, out_channels = super()._build_res5_block(cfg)
        stage.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return stage, out_channels


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        if "coco" in dataset_name:
            return COCOEvaluator(dataset_name, output_dir=folder)
        return PascalVOCDetectionEvaluator(dataset_name)


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
