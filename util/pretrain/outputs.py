"""What a pretraining run leaves beside its checkpoint every few epochs: cluster image grids (PNG + W&B image) and,
on request, the checkpoint as a W&B artifact. Shared by main_deepcluster.py and main_deepclusterv2.py."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from util.args import non_negative_int, positive_int
from util.data import ImageList
from util.pretrain.cluster_images import draw_epoch_grid
from util.tracking import Tracker

logger = logging.getLogger("deepcluster")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """--resume, and what a run leaves beside its checkpoint every few epochs (both pretraining scripts)."""
    parser.add_argument(
        "--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pth if present)"
    )
    parser.add_argument(
        "--log-every",
        type=positive_int,
        default=50,
        metavar="N",
        help="log the mean training loss and images/s every N steps (default: 50); the loss is read from the device "
        "only then, so a non-finite loss stops the run at the end of its N-step interval (the last checkpoint kept)",
    )
    group = parser.add_argument_group("cluster images")
    group.add_argument(
        "--cluster-images-every",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="every N epochs and for the final network, a grid of sample images of the largest, median, smallest and "
        "3 random clusters of the network after that many epochs: OUTPUT_DIR/clusters/epoch_XXXX.png and W&B "
        "`cluster/images` "
        "(default: 10; 0: never; `report.py RUN --cluster-images E` draws any saved epoch of a finished run)",
    )


def cluster_images(
    args: argparse.Namespace, tracker: Tracker, output_dir: Path, epoch: int, images: ImageList, assignments: np.ndarray
) -> None:
    """The grid of the clusters of the network after `epoch` epochs (the assignments saved for that epoch): every
    --cluster-images-every epochs, and the final network's."""
    every = args.cluster_images_every
    if not every or epoch == 0 or (epoch % every and epoch != args.epochs):
        return
    path = draw_epoch_grid(output_dir, epoch, images, assignments, args.seed)
    logger.info("cluster images: %s", path)
    tracker.image("cluster/images", path, f"clusters after {epoch} epochs", {"epoch": epoch})


def checkpoint_artifact(args: argparse.Namespace, tracker: Tracker, checkpoint: Path, epochs_trained: int) -> None:
    """Log the checkpoint as a W&B artifact every --wandb-checkpoint-every epochs and after the last one."""
    every = args.wandb_checkpoint_every
    if every and (epochs_trained % every == 0 or epochs_trained == args.epochs):
        tracker.log_checkpoint(checkpoint, epochs_trained)
