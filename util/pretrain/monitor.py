"""The kNN monitor shared by the pretraining scripts: a labelled held-out split, and its metrics for one network."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from util.args import positive_int
from util.augment import augment_preset
from util.data import ImageSource, build_source, resolve_split
from util.errors import UserError
from util.knn import StreamingKnn, l2n
from util.metrics import cluster_accuracy, nmi, topk_accuracy
from util.pretrain.clustering import torch_kmeans


def add_monitor_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The kNN monitor's flags (both pretraining scripts); returns the group for a script's own monitor flags."""
    group = parser.add_argument_group("monitor (weighted kNN on a labelled held-out split; never used for training)")
    group.add_argument(
        "--knn-every",
        type=int,
        default=None,
        help="measure kNN top-1 every N epochs, before the first step too (the random network: the floor) and after "
        "the last; 0 = off (default: 1 when a labelled held-out split exists: cifar10's test split or --knn-data)",
    )
    group.add_argument(
        "--knn-data",
        default=None,
        help="labelled held-out ImageFolder (same class folders as --data) for the monitor; the training side is "
        "--data with its folder labels",
    )
    group.add_argument("--knn-k", type=positive_int, default=20, help="neighbours (default: 20)")
    group.add_argument("--knn-temperature", type=float, default=0.07, help="vote temperature (default: 0.07)")
    return group


def resolve_knn_every(args: argparse.Namespace) -> None:
    """--knn-every's default (1 when a labelled held-out split exists, else 0), and its checks."""
    has_held_out = args.data == "cifar10" or args.knn_data is not None
    if args.knn_every is None:
        args.knn_every = 1 if has_held_out else 0
    if args.knn_every < 0:
        raise UserError(f"--knn-every {args.knn_every} must be >= 0 (0 turns the kNN monitor off)")
    if args.knn_every > 0 and not has_held_out:
        raise UserError("--knn-every needs a labelled held-out split: pass --knn-data FOLDER (or --knn-every 0)")


def build_held_out(args: argparse.Namespace, source: ImageSource) -> ImageSource:
    """The labelled held-out split of the kNN monitor (cifar10: its test split), in the extraction view."""
    cache = Path(args.data_cache)
    data, split = (str(resolve_split(args.knn_data, "", cache)), "") if args.knn_data else ("cifar10", "test")
    held_out = build_source(
        data,
        split,
        crop=args.image_size,
        augment=augment_preset("paper", args.image_size),  # unused: held-out images are read in the eval view only
        subset=None,
        in_memory=args.in_memory,
        workers=args.workers,
        cache_dir=cache,
    )
    if held_out.images.classes != source.images.classes:
        raise UserError(
            f"--knn-data {held_out.images.root} has other class folders than --data ({len(held_out.images.classes)} "
            f"vs {len(source.images.classes)}): give a held-out split of the same classes"
        )
    return held_out


def knn_metrics(
    monitor: StreamingKnn, held_out_feats: torch.Tensor, held_out_targets: np.ndarray, kmeans_iters: int, seed: int
) -> dict:
    """Weighted kNN top-1/top-5 (%) of the held-out split, and k-means with as many clusters as classes on its
    L2-normalised features: Hungarian accuracy and NMI (the "k-means accuracy" of IIC's Table 1)."""
    scores = monitor.all_reduce().scores().cpu()
    top1, top5 = topk_accuracy(scores, torch.from_numpy(held_out_targets), (1, 5))
    assignments = torch_kmeans(l2n(held_out_feats), monitor.num_classes, kmeans_iters, seed=seed).assignments
    return {
        "knn_top1": top1,
        "knn_top5": top5,
        "test_kmeans_acc": 100.0 * cluster_accuracy(held_out_targets, assignments),
        "test_kmeans_nmi": nmi(assignments, held_out_targets),
    }
