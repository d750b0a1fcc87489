"""The kNN monitor shared by the pretraining scripts: a labelled held-out split, and its metrics for one network."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from util.args import positive_int
from util.augment import augment_preset
from util.batchnorm import recompute_batchnorm
from util.data import ImageSource, build_source, resolve_split
from util.datasets import is_named
from util.errors import UserError
from util.knn import KNN_K, KNN_TEMPERATURE, StreamingKnn, l2_normalize
from util.metrics import cluster_accuracy, nmi, topk_accuracy
from util.pixels import PIXEL_VIEWS, pixel_knn_scores, pixel_skip_reason
from util.pretrain.alarms import add_alarm_args
from util.pretrain.clustering import PCAWhitening, torch_kmeans
from util.pretrain.features import extract_features
from util.pretrain.maps import FEATURES_KEY, add_map_arg
from util.pretrain.probe import OnlineProbe, add_probe_arg
from util.seeds import derive_seed

logger = logging.getLogger("deepcluster")

KMEANS_RUNS = 5  # seeded k-means runs of the held-out clustering metric; their mean and spread are logged
# The floors a monitored record carries beside its kNN (the components are in epoch 0's record only): the floor (the
# higher trivial baseline), the random network's (the higher of its BatchNorm statistics), the pixels' (the higher view)
FLOOR_KEYS = ("knn_floor", "knn_floor_random", "knn_floor_pixels")


def add_monitor_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The kNN monitor's flags (both pretraining scripts); returns the group for a script's own monitor flags."""
    group = parser.add_argument_group("monitor (weighted kNN on a labelled held-out split; never used for training)")
    group.add_argument(
        "--knn-every",
        type=int,
        default=None,
        help="measure kNN top-1 every N epochs, before the first step too (with the floor: the random network's and "
        "the pixels') and after "
        "the last; 0 = off (default: 1 when a labelled held-out split exists: cifar10's test split or --knn-data)",
    )
    group.add_argument(
        "--knn-data",
        default=None,
        help="labelled held-out ImageFolder (same class folders as --data) for the monitor; the training side is "
        "--data with its folder labels",
    )
    group.add_argument("--knn-k", type=positive_int, default=KNN_K, help="neighbours (default: %(default)s)")
    group.add_argument(
        "--knn-temperature", type=float, default=KNN_TEMPERATURE, help="vote temperature (default: %(default)s)"
    )
    add_alarm_args(group)
    add_probe_arg(group)
    add_map_arg(group)
    return group


def resolve_knn_every(args: argparse.Namespace) -> None:
    """--knn-every's default (1 when a labelled held-out split exists, else 0), and its checks."""
    has_held_out = is_named(args.data) or args.knn_data is not None
    if args.knn_every is None:
        args.knn_every = 1 if has_held_out else 0
    if args.knn_every < 0:
        raise UserError(f"--knn-every {args.knn_every} must be >= 0 (0 turns the kNN monitor off)")
    if args.knn_every > 0 and not has_held_out:
        raise UserError("--knn-every needs a labelled held-out split: pass --knn-data FOLDER (or --knn-every 0)")


def build_held_out(args: argparse.Namespace, source: ImageSource) -> ImageSource:
    """The labelled held-out split of the kNN monitor (cifar10: its test split), in the extraction view."""
    cache = Path(args.data_cache)
    data, split = (str(resolve_split(args.knn_data, "", cache)), "") if args.knn_data else (args.data, "test")
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


def monitor_pass(
    net: nn.Module,
    source: ImageSource,
    held_out: ImageSource,
    args: argparse.Namespace,
    device: torch.device,
    epoch: int,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pca_dim: int | None = None,
    progress: bool = False,
    desc: str = "monitor",
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    probe: OnlineProbe | None = None,
    keep_held_out: bool = False,
) -> tuple[dict, torch.Tensor | None]:
    """Measure one network (in eval mode): the held-out features, then one pass over the training images that casts
    their kNN votes and, with pca_dim, also returns them PCA-whitened and L2-normalised for the epoch's clustering
    (N, pca_dim), so DeepCluster's own extraction doubles as the monitor's pass.

    view(held-out features (M, D)) -> what the method clusters, for held_out_clustering; with pca_dim the default is
    the epoch's PCA-whitening (fit on the training images) and L2 normalisation, the view k-means sees in training.
    project: a neck between the backbone's features (kNN) and the clustered ones."""
    net.eval()
    amp = getattr(args, "amp", False)  # the pretraining run's precision, for the floor and every later epoch alike
    held_out_feats = extract_features(net, held_out, args.extract_batch_size, device, amp=amp)  # (M, D)
    knn = StreamingKnn(held_out_feats.to(device), len(held_out.images.classes), args.knn_k, args.knn_temperature)
    targets = torch.from_numpy(source.targets)
    pca = PCAWhitening(pca_dim) if pca_dim else None
    features = extract_features(
        net,
        source,
        args.extract_batch_size,
        device,
        pca=pca,
        pca_fit_samples=getattr(args, "pca_fit_samples", 0),
        progress=progress,
        desc=desc,
        on_raw_batch=lambda raw, idx: knn.update(raw, targets[idx]),
        project=project,
        amp=amp,
    )
    if view is None:  # the held-out features come back on the host; a neck runs where its weights are

        def projected(x: torch.Tensor) -> torch.Tensor:
            return x if project is None else project(x.to(device))

        view = (lambda x: l2_normalize(pca.apply(projected(x)))) if pca is not None else l2_normalize
    scores = knn.all_reduce().scores().cpu()
    top1, top5 = topk_accuracy(scores, torch.from_numpy(held_out.targets), (1, 5))
    seeds = [derive_seed(args.seed, "monitor-kmeans", epoch * KMEANS_RUNS + run) for run in range(KMEANS_RUNS)]
    with torch.inference_mode():
        held_out_view = view(held_out_feats)
    clustering = held_out_clustering(held_out_view, held_out.targets, seeds)
    probed = {"probe_top1": probe.top1(held_out_feats, held_out.targets)} if probe is not None else {}
    if keep_held_out:  # for the epoch's embedding map, drawn (and removed from the record) at the epoch's end
        probed[FEATURES_KEY] = (held_out_feats, held_out.targets)
    return {"knn_top1": top1, "knn_top5": top5, **probed, **clustering}, features if pca is not None else None


def held_out_clustering(view: torch.Tensor, targets: np.ndarray, seeds: list[int]) -> dict:
    """k-means (20 iterations) with as many clusters as classes on the held-out view (M, d), once per seed: mean
    and standard deviation of the Hungarian accuracy (%, the "k-means accuracy" of IIC's Table 1) and of the NMI.
    One run swings by 10-20 points from one initialisation to the next on small held-out splits."""
    num_classes = int(targets.max()) + 1
    accs, nmis = [], []
    for seed in seeds:
        assignments = torch_kmeans(view, num_classes, 20, seed=seed).assignments
        accs.append(100.0 * cluster_accuracy(targets, assignments))
        nmis.append(nmi(assignments, targets))
    return {
        "test_kmeans_acc": float(np.mean(accs)),
        "test_kmeans_acc_std": float(np.std(accs)),
        "test_kmeans_nmi": float(np.mean(nmis)),
        "test_kmeans_nmi_std": float(np.std(nmis)),
    }


def measure_floor(
    net: nn.Module,
    source: ImageSource,
    held_out: ImageSource,
    args: argparse.Namespace,
    device: torch.device,
    epoch: int,
    init_bn: dict,
    *,
    pca_dim: int | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """The trivial baselines of the monitor, measured once per run: the random network both ways, `init_bn`
    (BatchNorm's initial statistics, measured by the epoch's pass) and with statistics recomputed on the training
    images, and the pixels in both views (util/pixels.py). knn_floor_random and knn_floor_pixels are the higher of
    each pair; knn_floor, the floor, the higher of the two: what a trained network must beat."""
    recomputed, _ = monitor_pass(
        recompute_batchnorm(net, source, device),
        source,
        held_out,
        args,
        device,
        epoch,
        view=view,
        pca_dim=pca_dim,
        desc="floor (BatchNorm statistics recomputed)",
        project=project,
    )
    floors = {
        "knn_floor_random": max(init_bn["knn_top1"], recomputed["knn_top1"]),
        "knn_floor_init_bn": init_bn["knn_top1"],
        "knn_floor_recomputed_bn": recomputed["knn_top1"],
        **{f"{key}_recomputed_bn": value for key, value in recomputed.items() if key != "knn_top1"},
        **pixel_floor(source, held_out, args, device),
    }
    measured = [floors[key] for key in ("knn_floor_random", "knn_floor_pixels") if floors[key] is not None]
    return {"knn_floor": max(measured), **floors}


def pixel_floor(source: ImageSource, held_out: ImageSource, args: argparse.Namespace, device: torch.device) -> dict:
    """The monitor's kNN on the pixels of the training and held-out images in both views (util/pixels.py), and the
    higher of the two as knn_floor_pixels; None (and a log line) where the pixels are too large to be a baseline."""
    reason = pixel_skip_reason(len(source), len(held_out), args.image_size)
    if reason is not None:
        logger.info("pixel floor not measured: %s", reason)
        return {"knn_floor_pixels": None}
    num_classes = len(held_out.images.classes)
    scores = pixel_knn_scores(
        source, held_out, num_classes, args.knn_k, args.knn_temperature, args.extract_batch_size, device
    )
    targets = torch.from_numpy(held_out.targets)
    floors = {f"knn_floor_pixels_{view}": topk_accuracy(scores[view], targets, (1,))[0] for view in PIXEL_VIEWS}
    return {"knn_floor_pixels": max(floors.values()), **floors}


def floors_of(record: dict) -> dict:
    """The floors a monitored record carries (FLOOR_KEYS), from the record of the run's first measurement."""
    return {key: record.get(key) for key in FLOOR_KEYS}
