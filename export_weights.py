"""Export a backbone to the formats of the transfer tools (detection, segmentation, torch.hub users).

    .venv/bin/python export_weights.py --pretrained runs/x/checkpoint.pth --output-dir runs/x/export
    .venv/bin/python export_weights.py --pretrained deepcluster.pth --arch resnet50 --format detectron2 \
        --output-dir export

--pretrained takes every layout the evaluations load (this repository's checkpoints, mmselfsup, the original
DeepCluster, SwAV / DeepCluster-v2, torchvision). Written, one file per format, atomically, never over an existing
file unless --overwrite:
  backbone_torchvision.pth  a torchvision state dict: torchvision.models.resnet50() minus fc loads it strictly
  backbone_detectron2.pkl   detectron2's format (numpy arrays, detectron2's names, matching_heuristics): MODEL.WEIGHTS
  backbone_mmdet.pth        {"state_dict": ...} for mmdetection / mmsegmentation backbones (init_cfg Pretrained)
  export.json               the source weights (path, sha256), arch and the files written
The classifier / clustering head is not part of the backbone and is not exported.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from util.checkpoint import atomic_write
from util.errors import UserError
from util.eval.export import FORMATS, check_exportable, torchvision_state, write_export
from util.eval.pretrained import RANDOM, load_backbone, read_checkpoint, resolve_arch
from util.logging import setup_logging
from util.runtime import script_entry

logger = logging.getLogger("deepcluster")

FILE_NAMES = {
    "torchvision": "backbone_torchvision.pth",
    "detectron2": "backbone_detectron2.pkl",
    "mmdet": "backbone_mmdet.pth",
}
DEPARTURES = """Notes:
  Only ImageNet-stem ResNet-18/50 without the Sobel front end fit these formats; other networks are refused in one
  line (use their checkpoint with --pretrained in this repository's evaluations instead)."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, description=__doc__)
    parser.add_argument("--pretrained", required=True, help="checkpoint or state dict (any supported layout)")
    parser.add_argument("--arch", default=None, help="needed for layouts that do not record it")
    parser.add_argument("--sobel", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--format", nargs="+", default=list(FORMATS), choices=FORMATS, help="formats to write (default: all)"
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace existing export files")
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    setup_logging()
    if args.pretrained == RANDOM:
        raise UserError("--pretrained random has no weights worth exporting: give a checkpoint")
    checkpoint = read_checkpoint(args.pretrained)
    arch, sobel = resolve_arch(checkpoint, args.arch, args.sobel)
    for fmt in args.format:
        check_exportable(arch, sobel, fmt)
    out_dir = Path(args.output_dir)
    targets = [out_dir / FILE_NAMES[fmt] for fmt in args.format]
    existing = [str(p) for p in [*targets, out_dir / "export.json"] if p.exists()]  # one source per folder
    if existing and not args.overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s): choose another --output-dir or pass --overwrite")
    state = torchvision_state(load_backbone(checkpoint, arch, sobel, torch.device("cpu")))
    meta = {"author": "deepcluster", "arch": arch, "source": checkpoint.identity["path"], "sha256": checkpoint.sha256}
    for fmt, path in zip(args.format, targets, strict=True):
        atomic_write(path, lambda handle, fmt=fmt: write_export(state, fmt, handle, meta))
        logger.info("wrote %s (%s, %d tensors)", path, fmt, len(state))
    record = dict(meta, files={fmt: str(p) for fmt, p in zip(args.format, targets, strict=True)}, head="not exported")
    atomic_write(out_dir / "export.json", lambda handle: handle.write(json.dumps(record, indent=2).encode()))
    logger.info("the classifier / clustering head is not part of the backbone: not exported")
    return targets


if __name__ == "__main__":
    script_entry("DeepCluster weight export", get_args_parser, main, DEPARTURES)
