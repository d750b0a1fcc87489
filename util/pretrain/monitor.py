"""The kNN monitor shared by the pretraining scripts: a labelled held-out split, and what it measures of a network
(weighted kNN, held-out k-means, the online probe, the floors). The script extracts; the monitor listens."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
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
from util.eval.bootstrap import accuracy_statistic, percentile_interval, resampled
from util.knn import KNN_K, KNN_TEMPERATURE, StreamingKnn
from util.metrics import cluster_accuracy, hit_rate, nmi, topk_accuracy, topk_hits
from util.pixels import PIXEL_VIEWS, pixel_knn_scores, pixel_skip_reason
from util.pretrain.alarms import add_alarm_args
from util.pretrain.clustering import torch_kmeans
from util.pretrain.features import Extraction, extract_features
from util.pretrain.maps import FEATURES_KEY, add_map_arg, maps_on
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


@dataclass(frozen=True)
class MonitorSpec:
    """The kNN monitor's settings, read once from a pretraining script's flags (its Namespace stays in the script)."""

    every: int  # --knn-every: measure every N epochs and the final network; 0: off
    k: int  # --knn-k neighbours
    temperature: float  # --knn-temperature
    seed: int  # the held-out k-means runs' seeds derive from it
    image_size: int  # px: the pixel floor is measured up to util/pixels.MAX_PIXEL_SIZE
    keep_points: bool  # --tsne-every > 0: the held-out features go to the epoch's embedding map
    extraction: Extraction  # the held-out pass: batch, device, precision of the run's own extraction

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> MonitorSpec:
        return cls(
            every=args.knn_every,
            k=args.knn_k,
            temperature=args.knn_temperature,
            seed=args.seed,
            image_size=args.image_size,
            keep_points=maps_on(args.tsne_every),
            extraction=Extraction(args.extract_batch_size, device, args.amp),
        )

    def due(self, epoch: int, final: bool) -> bool:
        """Whether the network after `epoch` epochs is measured: every `every` epochs (0 included, the random
        network), and the final network."""
        return self.every > 0 and (final or epoch % self.every == 0)


@dataclass
class Votes:
    """One network's kNN measurement in progress: its held-out features, extracted first, and the running votes of
    the training images, cast by the script's own extraction pass (on_raw_batch=votes.update)."""

    held_out: torch.Tensor  # (M, D) the held-out split's raw features, on the host, dataset order
    knn: StreamingKnn  # the running k nearest training images of every held-out image
    labels: torch.Tensor  # (N,) the training images' labels

    def update(self, raw: torch.Tensor, idx: torch.Tensor) -> None:
        """raw: (B, D) features of the training images idx (B,), before any PCA or neck."""
        self.knn.update(raw, self.labels[idx])


class KnnMonitor:
    """The labelled held-out split and what the monitor measures of a network on it. It never passes over the
    training images itself: the pretraining script's extraction streams them into the Votes that listen() returns,
    so the monitor costs one pass over the held-out split."""

    def __init__(self, spec: MonitorSpec, source: ImageSource, held_out: ImageSource) -> None:
        self.spec, self.source, self.held_out = spec, source, held_out

    def listen(self, net: nn.Module) -> Votes:
        """Extract the held-out features of `net` (in eval mode) and open its votes."""
        net.eval()
        held_out = extract_features(net, self.held_out, self.spec.extraction)  # (M, D)
        num_classes = len(self.held_out.images.classes)
        knn = StreamingKnn(held_out.to(self.spec.extraction.device), num_classes, self.spec.k, self.spec.temperature)
        return Votes(held_out, knn, torch.from_numpy(self.source.targets))

    def measure(
        self,
        votes: Votes,
        epoch: int,
        view: Callable[[torch.Tensor], torch.Tensor],
        probe: OnlineProbe | None = None,
        keep_points: bool = False,
    ) -> dict:
        """The record of a network whose votes are all cast: kNN top-1 / top-5, top-1's 95 % bootstrap interval over
        the held-out images (util/eval/bootstrap.py, as eval_linear.py draws it from the same --seed), the held-out
        k-means in `view` (what the method clusters: view(held-out features (M, D)) -> (M, d)), the online probe, and
        the held-out features for the epoch's map (keep_points; under FEATURES_KEY, taken out of the record at the
        epoch's end)."""
        scores = votes.knn.all_reduce().scores().cpu()  # (M, C) weighted votes of the held-out images
        hits1, hits5 = topk_hits(scores, torch.from_numpy(self.held_out.targets), (1, 5))
        top1, top5 = hit_rate(hits1), hit_rate(hits5)
        low, high = percentile_interval(resampled(accuracy_statistic(hits1.numpy()), len(hits1), self.spec.seed))
        seeds = [derive_seed(self.spec.seed, "monitor-kmeans", epoch * KMEANS_RUNS + run) for run in range(KMEANS_RUNS)]
        with torch.inference_mode():
            held_out_view = view(votes.held_out)  # (M, d)
        record = {"knn_top1": top1, "knn_top5": top5, "knn_top1_ci95_low": low, "knn_top1_ci95_high": high}
        if probe is not None:
            record["probe_top1"] = probe.top1(votes.held_out, self.held_out.targets)
        if keep_points:
            record[FEATURES_KEY] = (votes.held_out, self.held_out.targets, self.held_out.images.classes)
        return {**record, **held_out_clustering(held_out_view, self.held_out.targets, seeds)}

    def floor(self, net: nn.Module, init_bn: dict, measure_network: Callable[[nn.Module], dict]) -> dict:
        """The trivial baselines, measured once per run: the random network both ways, `init_bn` (BatchNorm's
        initial statistics, the epoch's own record) and with statistics recomputed on the training images, measured
        by measure_network (as the script measures its network), and the pixels in both views (util/pixels.py).
        knn_floor_random and knn_floor_pixels are the higher of each pair; knn_floor, the floor, the higher of the
        two: what a trained network must beat."""
        recomputed = measure_network(recompute_batchnorm(net, self.source, self.spec.extraction.device))
        floors = {
            "knn_floor_random": max(init_bn["knn_top1"], recomputed["knn_top1"]),
            "knn_floor_init_bn": init_bn["knn_top1"],
            "knn_floor_recomputed_bn": recomputed["knn_top1"],
            **{f"{key}_recomputed_bn": value for key, value in recomputed.items() if key != "knn_top1"},
            **self.pixel_floor(),
        }
        measured = [floors[key] for key in ("knn_floor_random", "knn_floor_pixels") if floors[key] is not None]
        return {"knn_floor": max(measured), **floors}

    def pixel_floor(self) -> dict:
        """The kNN on the pixels of the training and held-out images in both views (util/pixels.py), and the higher
        of the two as knn_floor_pixels; None (and a log line) where the pixels are too large to be a baseline."""
        spec = self.spec
        reason = pixel_skip_reason(len(self.source), len(self.held_out), spec.image_size)
        if reason is not None:
            logger.info("pixel floor not measured: %s", reason)
            return {"knn_floor_pixels": None}
        num_classes = len(self.held_out.images.classes)
        how = spec.extraction
        scores = pixel_knn_scores(
            self.source, self.held_out, num_classes, spec.k, spec.temperature, how.batch_size, how.device
        )
        targets = torch.from_numpy(self.held_out.targets)
        floors = {f"knn_floor_pixels_{view}": topk_accuracy(scores[view], targets, (1,))[0] for view in PIXEL_VIEWS}
        return {"knn_floor_pixels": max(floors.values()), **floors}


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


def floors_of(record: dict) -> dict:
    """The floors a monitored record carries (FLOOR_KEYS), from the record of the run's first measurement."""
    return {key: record.get(key) for key in FLOOR_KEYS}
