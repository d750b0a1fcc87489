"""A random network's BatchNorm statistics recomputed on the data: one of the two ways the random-init baseline is
measured, in the pretraining monitor and in every evaluation.

A network that never trained still has BatchNorm's initial statistics (mean 0, variance 1), which no trained network
has; recomputed, they are those of the data the network sees. The baseline is measured both ways and the higher
number is the one a trained network must beat."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from util import dist as dist_util
from util.data import ImageSource, extraction_order

BN_RECOMPUTE_IMAGES = 20_000  # training images whose batch statistics give the recomputed BatchNorm
# Images per forward of the recomputation, whatever the caller's batch: the statistics are an average of per-batch
# statistics, so the monitor and every evaluation get the same network from the same images
BN_RECOMPUTE_BATCH = 256


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, source: ImageSource, device: torch.device) -> nn.Module:
    """A copy of `net` whose BatchNorm running statistics are the average of the batch statistics of one no-grad pass
    in training mode over the training images (deterministic view, at most BN_RECOMPUTE_IMAGES of a fixed random
    order, BN_RECOMPUTE_BATCH at a time). Only BatchNorm is in training mode (no dropout, no draw from the global
    RNGs). Distributed: each rank its shard, averaged over ranks."""
    copy = deepcopy(net).eval()
    norms = [m for m in copy.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
        norm.train()
    order = extraction_order(len(source))[:BN_RECOMPUTE_IMAGES]
    for images, _ in source.eval_batches(dist_util.shard(order, wrap=True), BN_RECOMPUTE_BATCH, device):
        copy(images)
    if dist_util.current().distributed:
        for norm in norms:
            for stat in (norm.running_mean, norm.running_var):
                moved = stat.to(dist_util.collective_device())
                torch.distributed.all_reduce(moved)
                stat.copy_(moved / dist_util.current().world_size)
    return copy.eval()
