"""The raw-pixel baseline: the same weighted kNN (or probe) on the input images themselves, with no network.

A random convnet's global average pool throws away where things are; the pixels keep it, and on small images a kNN on
them is the strongest trivial baseline (on the bundled CIFAR-10, above the random ResNet-18's). A representation is
learnt only where it beats both: every pretraining run and every evaluation measures the pixels beside the random
network (docs/training.md, docs/protocols.md).

Two views of the pixels, both at the run's image size in the deterministic view (resize + center crop):
- `input`: the images exactly as the network receives them (/255, then ImageNet's mean and std per channel), flattened;
- `centred`: pixels / 255 with each image's own mean (over its pixels and channels) subtracted, flattened: under the
  cosine similarity of the kNN this is the correlation of two images, blind to their brightness.
The pixel floor is the higher of the two, as the random network's floor is the higher of its two BatchNorm statistics:
neither view is the right one in general (on the digits `input` scores higher, on CIFAR-10 `centred`).
"""

from __future__ import annotations

import numpy as np
import torch

from util import dist as dist_util
from util.augment import IMAGENET_MEAN, IMAGENET_STD
from util.data import ImageSource, extraction_order
from util.knn import StreamingKnn

PIXEL_VIEWS = ("input", "centred")
MAX_PIXEL_SIZE = 64  # px: pixels of larger images (224 px: 150,528 numbers an image) are not a baseline anyone runs
MAX_PIXEL_MACS = 5e13  # training images x held-out images x pixel dims, per view: about a minute of this 2-core CPU


def pixel_view(images: torch.Tensor, view: str) -> torch.Tensor:
    """(B, 3, S, S) images normalised as the network's input -> (B, 3 S S) float32 rows of the view."""
    flat = images.float().flatten(1)  # (B, D) the network's input
    if view == "input":
        return flat
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    raw = (images.float() * std + mean).flatten(1)  # (B, D) pixels / 255
    return raw - raw.mean(1, keepdim=True)


def pixel_skip_reason(num_train: int, num_test: int, image_size: int) -> str | None:
    """Why the pixel baseline is not measured for this data (None: it is): images above MAX_PIXEL_SIZE, or a kNN above
    MAX_PIXEL_MACS multiply-adds per view."""
    if image_size > MAX_PIXEL_SIZE:
        return f"images of {image_size} px (pixel baselines are measured up to {MAX_PIXEL_SIZE} px)"
    macs = float(num_train) * num_test * 3 * image_size**2
    if macs > MAX_PIXEL_MACS:
        return (
            f"{num_train} x {num_test} images of {image_size} px: {macs:.1e} multiply-adds a view (at most "
            f"{MAX_PIXEL_MACS:.0e})"
        )
    return None


def stack_pixels(source: ImageSource, batch_size: int, device: torch.device, view: str) -> torch.Tensor:
    """Every image of `source` in dataset order as (N, 3 S S) rows of the view, on `device` (every rank reads all)."""
    rows = [pixel_view(images, view) for images, _ in source.eval_batches(np.arange(len(source)), batch_size, device)]
    return torch.cat(rows)


@torch.inference_mode()
def pixel_knn_scores(
    train: ImageSource,
    test: ImageSource,
    num_classes: int,
    k: int,
    temperature: float,
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Per view, the weighted-kNN class votes (M, C) of the `test` images against the `train` images on their pixels
    (the kNN of util/knn.py, as for a network's features). Distributed: every rank streams its share of the training
    images (no image twice) and the running neighbours are merged."""
    knns = {
        view: StreamingKnn(stack_pixels(test, batch_size, device, view), num_classes, k, temperature)
        for view in PIXEL_VIEWS
    }
    targets = torch.from_numpy(train.targets)
    mine = dist_util.shard(extraction_order(len(train)), wrap=False)
    for images, idx in train.eval_batches(mine, batch_size, device):
        for view, knn in knns.items():
            knn.update(pixel_view(images, view), targets[idx])
    return {view: knn.all_reduce().scores().cpu() for view, knn in knns.items()}
