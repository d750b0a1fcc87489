"""DeepCluster pretraining (Caron et al., ECCV 2018).

Every epoch: extract features of the whole training set -> PCA-whiten + L2-normalise -> k-means (or PIC) ->
pseudo-labels -> sample uniformly over clusters -> reset the classifier head -> train one epoch on the
pseudo-labels. Runs on a CPU, on one GPU, with torchrun, or on SLURM through slurm/submit.py.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import build_model, check_image_size
from models.neck import NECKS, Trunk, build_neck
from util import dist as dist_util
from util.args import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    add_wandb_args,
    positive_int,
)
from util.augment import AUGMENT_PRESETS, AugmentSpec, augment_preset
from util.data import profile_data
from util.errors import UserError
from util.faults import kill_point
from util.knn import l2_normalize
from util.logging import interactive
from util.metrics import ari, cluster_accuracy, nmi, purity
from util.precision import add_amp_arg, add_compile_arg, autocast, check_amp, compile_in_place, to_channels_last
from util.pretrain.alarms import size_entropy
from util.pretrain.clustering import (
    ClusteringResult,
    ClusteringSpec,
    PCAWhitening,
    PicParams,
    check_k,
    check_pic_neighbors,
    cluster_sizes,
    pseudo_labels,
    run_clustering,
    torch_kmeans,
)
from util.pretrain.epoch_log import PhaseTimer, close_record
from util.pretrain.features import Extraction, extract_features
from util.pretrain.monitor import Votes, add_monitor_args, floors_of, resolve_knn_every
from util.pretrain.outputs import add_output_args
from util.pretrain.probe import OnlineProbe, wants_probe
from util.pretrain.recipe import LARGE_ARCH, PAPER, SMALL_ARCH, SMALL_LR, apply_rule
from util.pretrain.run import EpochContext, Method, RunState, SavedGenerator, open_run, resume, unwrap
from util.pretrain.sampler import UniformClusterSampler
from util.pretrain.step_log import StepLog
from util.runtime import script_entry
from util.seeds import derive_seed

logger = logging.getLogger("deepcluster")

DEPARTURES = """departures from the paper (Caron et al. 2018), each named so results can be read right:
  --pca-fit-samples  PCA is fit on a fixed random sample of 100k features (all of them when N <= 100k, as in
                     the paper) and later batches are reduced on the fly; the paper fits on all N.
  --in-memory        small datasets are decoded once to uint8 and augmented in batches on the device: bilinear
                     crops without antialiasing, colour jitter in a fixed order (torchvision: random order).
  --arch, --lr       the small-data rule's: a DAWNBench-style ResNet-9 (resnet9_w32) for images of at most 64 px,
                     at --lr 0.1; else ResNet-18 at the paper's 0.05. The paper is `--arch alexnet --sobel --aug
                     paper` at 224 px.
  the small-data rule  --k, --pca-dim, --batch-size, --reassign, --image-size, --in-memory and --aug default to values
                     chosen from the number and size of the training images (docs/recipes.md): the paper's on
                     ImageNet; on smaller sets fewer clusters (at most N/10), PCA to at most N/40 dims, batch 64 below
                     10,000 images, 1-8 dataset passes per clustering (the original code's --reassign; the paper
                     re-clusters every pass): the fewest that give each clustering 300 SGD steps, at most 8; and
                     class-keeping crops. The values that differ from the paper's are printed at start-up and saved in
                     the checkpoint (args.rule_departures).
  k-means            empty clusters are re-seeded by splitting a large cluster (faiss and torch backends), as the
                     original; clusters still empty at the end are dropped from the pseudo-labels and counted.
  PIC                the number of clusters is found by PIC, not set by --k.
  --lr-schedule cosine  not in the paper (a constant rate): the backbone's rate follows a cosine from --lr to 0 over
                     --epochs.
  --neck mlp         not in the paper for ResNets: two Linear-BN-ReLU layers between the pooled features and the
                     classifier, clustered there (the paper's AlexNet clusters fc7).
  --knn-every        not in the paper: a weighted kNN monitor (k=20, T=0.07) on a labelled held-out split beside
                     its floor, the higher of two trivial baselines scored the same way: the random network (the
                     higher of BatchNorm's initial and recomputed statistics) and the pixels (two views, the higher;
                     images of at most 64 px); it never influences training."""

# Arguments that define a run: resuming an output folder with other values would mix two experiments.
RUN_DEFINING_ARGS = (
    "arch",
    "sobel",
    "data",
    "subset",
    "k",
    "pca_dim",
    "clustering",
    "image_size",
    "labels_from",
    "neck",
    "lr_schedule",
)
METHOD = Method("deepcluster", RUN_DEFINING_ARGS, DEPARTURES, done_hint="raise --epochs to train further")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster pretraining", add_help=False)
    add_model_args(parser, None, f"the small-data rule: {SMALL_ARCH} for images of at most 64 px, else {LARGE_ARCH}")
    add_data_args(parser)
    add_clustering_args(parser)
    add_training_args(parser)
    add_augmentation_args(parser)
    add_monitor_args(parser)
    add_runtime_args(parser)
    add_output_args(parser)
    add_wandb_args(parser, pretraining=True)
    return parser


def add_clustering_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("clustering")
    group.add_argument(
        "--k",
        type=positive_int,
        default=None,
        help="number of clusters; over-cluster, about 10x the number of classes (paper: 10000 on ImageNet; default: "
        "the small-data rule, 100 below 100,000 training images, 1000 below 500,000, else 10000)",
    )
    group.add_argument(
        "--pca-dim",
        type=positive_int,
        default=None,
        help="PCA-whitening dimension (paper: 256; default: the small-data rule, at most one per 40 training images, "
        "a power of two up to 256)",
    )
    group.add_argument(
        "--pca-fit-samples",
        type=int,
        default=100_000,
        help="fit PCA on this many features (a fixed random sample) and reduce the rest on the fly, so the host never "
        "holds N x D features; 0 = fit on all (the paper). Identical to the paper whenever N <= this number",
    )
    group.add_argument("--clustering", choices=("kmeans", "pic"), default="kmeans", help="paper: kmeans (PIC studied)")
    group.add_argument(
        "--kmeans-backend",
        choices=("faiss", "torch"),
        default="faiss",
        help="faiss (CPU, or GPU with faiss-gpu) or pure torch on --device",
    )
    group.add_argument("--kmeans-iters", type=positive_int, default=20, help="Lloyd iterations (paper: 20)")
    group.add_argument("--pic-neighbors", type=positive_int, default=5, help="PIC nearest-neighbour graph degree")
    group.add_argument("--pic-sigma", type=float, default=0.2, help="PIC Gaussian kernel bandwidth")
    group.add_argument("--pic-alpha", type=float, default=0.001, help="PIC weight of the diffusion term")
    group.add_argument("--pic-iters", type=positive_int, default=200, help="PIC power iterations")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--epochs",
        type=positive_int,
        default=500,
        help="total epochs (paper: 500; mmselfsup's ResNet-50 + Sobel config: 200)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per step per process (paper: 256; default: the small-data rule, 256 from 10,000 images on, "
        "else 64)",
    )
    group.add_argument(
        "--extract-batch-size",
        type=positive_int,
        default=None,
        help="images per forward at extraction (2x --batch-size)",
    )
    add_sgd_args(group)
    group.add_argument(
        "--neck",
        choices=NECKS,
        default="none",
        help="none: cluster and classify the backbone's pooled features (the paper's ResNets). mlp: two Linear-BN-ReLU "
        "layers (2048 units) between them and the classifier, clustered there, as the paper's AlexNet clusters fc7; "
        "the monitor and evaluations read the pooled features below it",
    )
    group.add_argument(
        "--reassign",
        type=float,
        default=None,
        help="dataset passes of training between two clusterings (the original code's --reassign). Each epoch samples "
        "about reassign x N images uniformly over the clusters. Default: the small-data rule, the fewest of 1 (the "
        "paper), 2, 4 or 8 that give at least 300 SGD steps per clustering, at most 8 (2 on cifar10; 8 on "
        "sklearn-digits, 175 steps): fewer steps keep kNN below the random network's",
    )
    group.add_argument(
        "--labels-from",
        choices=("clusters", "dataset"),
        default="clusters",
        help="clusters: DeepCluster. dataset: train on the true labels instead, a SANITY CHECK of the training "
        "machinery (supervised, not DeepCluster; clustering still runs for its metrics)",
    )
    add_amp_arg(group)
    add_compile_arg(group)
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False, help="SyncBatchNorm (GPUs)")


def add_sgd_args(group: argparse._ArgumentGroup) -> None:
    """The rates, their schedule, momentum and weight decay."""
    group.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"backbone learning rate (paper: {PAPER['lr']:g}; default: {SMALL_LR:g} for {SMALL_ARCH}, the small-data "
        f"rule's network for images of at most 64 px, else {PAPER['lr']:g})",
    )
    group.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="the backbone's learning rate: constant (the paper) or a cosine from --lr down to 0 at the last step of "
        "--epochs (which then defines the run: a resume must keep it)",
    )
    group.add_argument("--head-lr", type=float, default=None, help="classifier head learning rate (default: --lr)")
    group.add_argument("--momentum", type=float, default=0.9, help="backbone SGD momentum; the head has none (paper)")
    group.add_argument("--wd", type=float, default=1e-5, help="weight decay (paper: 1e-5)")


def add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("augmentation")
    group.add_argument(
        "--aug",
        choices=AUGMENT_PRESETS,
        default=None,
        help="augmentation preset: paper (crop + flip), mmselfsup (mmselfsup's DeepCluster ResNet-50 + Sobel config), "
        "cifar (32 px crops, flip, jitter, grayscale), noflip (cifar without flips, crops of at least 40%% of the "
        "area, rotation up to 10 degrees: for digits, text, symbols). Default: noflip for sklearn-digits, cifar for "
        "images of at most 64 px, else paper",
    )
    group.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="area range of the random resized crops (default: the --aug preset's)",
    )
    group.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: the --aug preset's; off for data a mirror image changes)",
    )


def finalize_args(args: argparse.Namespace, world_size: int = 1, device_type: str = "cpu") -> argparse.Namespace:
    """Reject impossible flags; fill the defaults that depend on the data (util/pretrain/recipe.py: the rule); reject
    what the data makes impossible (k, the batch, the PCA dimension against the number of images)."""
    check_amp(args.amp, device_type)
    for name in ("lr", "head_lr"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name):g} must be positive")
    if args.reassign is not None and args.reassign <= 0:
        raise UserError(f"--reassign {args.reassign} must be positive (dataset passes between two clusterings)")
    if args.crop_scale is not None and not 0 < args.crop_scale[0] <= args.crop_scale[1] <= 1:
        low, high = args.crop_scale
        raise UserError(f"--crop-scale {low:g} {high:g} must satisfy 0 < LOW <= HIGH <= 1 (areas of the image)")
    if args.sync_bn and device_type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation): drop --sync-bn")
    resolve_knn_every(args)
    profile = profile_data(args.data, "train", args.subset, Path(args.data_cache))
    args.rule_departures = apply_rule(args, profile, world_size)
    args.head_lr = args.lr if args.head_lr is None else args.head_lr
    args.extract_batch_size = args.extract_batch_size or 2 * args.batch_size
    num = profile.num_images
    if args.clustering == "kmeans":
        check_k(num, args.k)
    else:
        check_pic_neighbors(num, args.pic_neighbors)
    per_epoch = max(1, round(args.reassign * num))  # the images an epoch trains on, all processes together
    if per_epoch // world_size < args.batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} x {world_size} process(es) is larger than the {per_epoch} images an "
            f"epoch trains on ({num} images x --reassign {args.reassign:g}): lower --batch-size"
        )
    if num <= args.pca_dim:
        raise UserError(
            f"{num} images are too few for --pca-dim {args.pca_dim}: use more images or a smaller --pca-dim"
        )
    return args


def training_augment(args: argparse.Namespace) -> AugmentSpec:
    """The --aug preset with --crop-scale and --flip applied."""
    spec = augment_preset(args.aug, args.image_size)
    if args.crop_scale is not None:
        spec = replace(spec, scale=tuple(args.crop_scale))
    if args.flip is not None:
        spec = replace(spec, flip=args.flip)
    return spec


def main(args: argparse.Namespace) -> None:
    # ---- set-up: processes, device, seeds, output folder; the flags the data decides; the images and the monitor
    run = open_run(args, finalize_args, training_augment)
    args, device, info = run.args, run.device, run.info
    effective = args.batch_size * info.world_size
    logger.info(
        "effective batch %d (%d x %d processes); k=%d; device %s",
        effective,
        args.batch_size,
        info.world_size,
        args.k,
        device,
    )

    # ---- model and optimizer: backbone (and --neck) trained throughout; the classifier head is new every epoch
    trunk = build_trunk(args, device, info)
    optimizer = torch.optim.SGD(trunk.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    cluster_rng = np.random.default_rng(args.seed)  # a fresh k-means seed every epoch (paper, section 3.2)
    probe = (
        OnlineProbe(trunk.backbone.feature_dim, len(run.source.images.classes), device) if wants_probe(args) else None
    )
    saved = {"backbone": trunk.backbone, "neck": trunk.neck, "optimizer": optimizer, "online_probe": probe}
    saved["cluster_rng"] = SavedGenerator(cluster_rng)

    # ---- resume from OUTPUT_DIR/checkpoint.pth (or --resume), every object strictly; the W&B run
    cosine = args.lr_schedule == "cosine"  # its horizon is --epochs: then a run of its own
    resumed = resume(run, replace(METHOD, run_defining=METHOD.run_defining + ("epochs",) * cosine), saved)
    if resumed is None:
        return
    state, outputs = resumed
    run = Run(**vars(run), trunk=trunk, optimizer=optimizer, cluster_rng=cluster_rng, probe=probe)

    # ---- epochs: extract -> cluster -> pseudo-label -> train -> log -> checkpoint. The last pass measures the final
    # network (extraction, clustering, monitor) without training: the metrics of the weights in the last checkpoint
    for epoch in range(state.epoch, args.epochs + 1):
        trains = epoch < args.epochs
        record, assignments = run_epoch(run, epoch, state, trains)
        outputs.close_epoch(record, assignments, state, trains)
    outputs.finish()  # the run's answer: the final network against its floors, where to look next
    dist_util.cleanup()


def build_trunk(args: argparse.Namespace, device: torch.device, info: dist_util.DistInfo) -> Trunk:
    """The backbone and its --neck, on the device, in channels_last (default), SyncBatchNorm with --sync-bn on
    several processes, compiled with --compile."""
    backbone = build_model(args.arch, args.sobel).to(device)
    check_image_size(backbone, args.arch, args.image_size)
    trunk = Trunk(backbone, build_neck(args.neck, backbone.feature_dim))
    trunk = to_channels_last(trunk.to(device), args.channels_last)
    if args.sync_bn and info.distributed:
        trunk = nn.SyncBatchNorm.convert_sync_batchnorm(trunk)
    compile_in_place(trunk.backbone, args.compile)
    return trunk


@dataclass(kw_only=True)
class Run(EpochContext):
    """What every DeepCluster epoch reads and updates: the trunk being trained, its optimizer, the k-means seeds."""

    trunk: Trunk
    optimizer: torch.optim.Optimizer
    cluster_rng: np.random.Generator
    probe: OnlineProbe | None = None  # the online linear probe (with the kNN monitor)


def run_epoch(run: Run, epoch: int, state: RunState, train: bool = True) -> tuple[dict, np.ndarray]:
    """One DeepCluster epoch (paper, section 3; docs/training.md); returns the epoch's record for log.jsonl and the
    assignments it trained on. Its clustering and kNN are those of the network after `epoch` epochs of training;
    train=False measures them without training."""
    args, source, times, backbone = run.args, run.source, PhaseTimer(), run.trunk.backbone
    run.trunk.eval()
    dist_util.broadcast_buffers(run.trunk)  # every rank extracts with rank 0's BatchNorm statistics, the saved ones
    # 1-2. extract features in eval mode, PCA-whiten and L2-normalise: (N, pca_dim). When the kNN monitor is due, the
    # same pass casts the training images' votes for the held-out split (the monitor listens)
    monitored = run.monitor is not None and run.monitor.spec.due(epoch, final=not train)
    with times("extract"):
        if monitored:  # the probe is untrained before the first epoch
            probe, keep_points = run.probe if epoch > 0 else None, run.monitor.spec.keep_points
            features, knn = measure(run, backbone, epoch, probe, keep_points)
        else:
            features, knn = extract(run, backbone, epoch)[0], {}
    with times("floor"):  # once per run: the random network (BatchNorm initial and recomputed), the pixels
        if epoch == 0 and knn:
            knn.update(run.monitor.floor(backbone, knn, lambda net: measure(run, net, epoch)[1]))
            state.floors = floors_of(knn)
    # 3-4. cluster the (N, pca_dim) features; pseudo-labels 0..K'-1 over the non-empty clusters
    with times("cluster"):
        result = cluster(args, features, int(run.cluster_rng.integers(2**31)), run.device, run.info)
        labels, num_pseudo = pseudo_labels(result.assignments)
    # 5-7. sample uniformly over clusters, reset the head, train one epoch
    stats = {"loss": None, "images": 0}
    with times("train"):
        if train and args.labels_from == "dataset":  # sanity check: the true labels stand in for the clusters
            labels, num_pseudo = source.targets.copy(), len(source.images.classes)
        if train:
            head = new_head(run.trunk.out_dim, num_pseudo, run.device)
            repeated = times.total - times["time_floor"]  # what every epoch spends before training
            stats = train_one_epoch(run, epoch, labels, head, before_training=repeated)
    # 8. metrics of this epoch's clustering and of the monitor
    passes = times["time_extract"] + times["time_cluster"] + times["time_train"]
    record = {"epoch": epoch, "loss": stats["loss"], **cluster_metrics(result, state.assignments, source.targets)}
    record.update(knn, epoch_images_per_s=len(source) / max(passes, 1e-9))
    return close_record(record, times, stats, state.floors, run.info.world_size, args.epochs), result.assignments


def extract(run: Run, net: nn.Module, epoch: int, votes: Votes | None = None) -> tuple[torch.Tensor, PCAWhitening]:
    """Steps 1-2 for `net` (in eval mode): the (N, pca_dim) features to cluster (the neck's, with --neck),
    PCA-whitened and L2-normalised, the training images' raw features streamed into the monitor's `votes` by the
    same pass; and the PCA fitted on them."""
    args, project = run.args, run.trunk.project
    pca = PCAWhitening(args.pca_dim, args.pca_fit_samples)
    progress = interactive() and run.info.is_main
    how = Extraction(args.extract_batch_size, run.device, args.amp, progress, f"epoch {epoch} extract")
    on_raw_batch = None if votes is None else votes.update
    return extract_features(net, run.source, how, pca=pca, on_raw_batch=on_raw_batch, project=project), pca


def clustered_view(run: Run, pca: PCAWhitening) -> Callable[[torch.Tensor], torch.Tensor]:
    """The view k-means sees, for other images' raw features: (M, D) on the host -> (M, pca_dim) PCA-whitened and
    L2-normalised (through the neck, on the device, with --neck)."""
    project, device = run.trunk.project, run.device

    def view(raw: torch.Tensor) -> torch.Tensor:
        return l2_normalize(pca.apply(raw if project is None else project(raw.to(device))))

    return view


def measure(
    run: Run, net: nn.Module, epoch: int, probe: OnlineProbe | None = None, keep_points: bool = False
) -> tuple[torch.Tensor, dict]:
    """Steps 1-2 with the monitor listening: the features to cluster and the monitor's record of `net` (its kNN, the
    held-out k-means in the clustered view, the online probe)."""
    votes = run.monitor.listen(net)
    features, pca = extract(run, net, epoch, votes)
    return features, run.monitor.measure(votes, epoch, clustered_view(run, pca), probe, keep_points)


def train_one_epoch(run: Run, epoch: int, labels: np.ndarray, head: nn.Linear, before_training: float) -> dict:
    """Steps 5-7: about --reassign x N images drawn uniformly over the clusters (each rank its shard of one global
    list), the epoch's fresh classifier `head`, one epoch of SGD on the pseudo-labels; returns the averages."""
    args, info = run.args, run.info
    num_samples = max(1, round(args.reassign * len(run.source)))
    sampler = UniformClusterSampler(labels, num_samples, args.seed, epoch, info.rank, info.world_size)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=args.head_lr, momentum=0.0, weight_decay=args.wd)
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "pretrain-batches", epoch))
    indices = np.asarray(sampler.indices)
    batches = run.source.train_batches(indices, args.batch_size, run.device, gen, info.rank, info.world_size)
    num_steps = len(indices) // args.batch_size
    batches = run.clock.watch(batches, num_steps, before_training, args.batch_size * info.world_size)
    batches = tqdm(batches, desc=f"epoch {epoch} train", disable=not (interactive() and info.is_main), leave=False)
    model: nn.Module = PseudoLabelNet(run.trunk, head)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    log = StepLog(args.log_every, epoch, num_steps, run.device, "lower --lr", info.is_main, run.clock)
    targets = torch.from_numpy(labels).to(run.device)  # (N,) pseudo-labels, on the device for the whole epoch
    probing = None
    if run.probe is not None:  # the training split's true labels, for the online probe only
        probing = (run.probe, torch.from_numpy(run.source.targets).to(run.device))
    schedule = None
    if args.lr_schedule == "cosine":  # the backbone's rate, step by step over the whole run; the head's is constant
        total = args.epochs * num_steps

        def schedule(step: int) -> None:
            at = epoch * num_steps + step
            for group in run.optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * at / total))

    stats = train_steps(model, (run.optimizer, head_optimizer), batches, targets, args.amp, log, probing, schedule)
    if stats["images"] == 0:
        raise UserError(f"no training step ran: --batch-size {args.batch_size} is larger than the dataset")
    return stats


def cluster(
    args: argparse.Namespace,
    features: torch.Tensor,
    seed: int,
    device: torch.device,
    info: dist_util.DistInfo,
) -> ClusteringResult:
    """k-means/PIC on rank 0 and broadcast, or the torch backend in place on every rank's shard."""
    if args.clustering == "kmeans" and args.kmeans_backend == "torch" and info.distributed:
        rows = torch.from_numpy(dist_util.shard(np.arange(len(features)), info, wrap=False))
        local = torch_kmeans(features[rows].to(device), args.k, args.kmeans_iters, seed, True, rows, len(features))
        assignments = dist_util.gather_rows_by_index(rows, torch.from_numpy(local.assignments), len(features))
        assignments = assignments.numpy()
        sizes = cluster_sizes(assignments, args.k)
        return ClusteringResult(assignments, args.k, int((sizes == 0).sum()), local.reseeded_clusters, local.objective)
    result = None
    if info.is_main:
        on_device = args.kmeans_backend == "torch" or args.clustering == "pic"
        pic = PicParams(args.pic_neighbors, args.pic_sigma, args.pic_alpha, args.pic_iters)
        spec = ClusteringSpec(
            args.k, args.clustering, args.kmeans_backend, args.kmeans_iters, pic, device.type == "cuda"
        )
        result = run_clustering(features.to(device) if on_device else features, spec, seed)
    return dist_util.broadcast_object(result)


def new_head(feature_dim: int, num_classes: int, device: torch.device) -> nn.Linear:
    """A fresh classifier every epoch (paper, section 3.4): N(0, 0.01) weights, zero bias."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    return head.to(device)


class PseudoLabelNet(nn.Module):
    """backbone -> its head activation (ReLU after fc7 for AlexNet/VGG) or the neck -> classifier over the clusters."""

    def __init__(self, trunk: Trunk, head: nn.Linear) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        self.features = features.detach()  # the pooled backbone features, for the online probe
        return self.head(self.trunk.classifier_input(features))


def train_steps(
    model: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, ...],
    batches,
    labels: torch.Tensor,
    amp: bool,
    log: StepLog,
    probing: tuple[OnlineProbe, torch.Tensor] | None = None,
    schedule: Callable[[int], None] | None = None,
) -> dict:
    """Cross-entropy on the pseudo-labels, one SGD step per batch of (images on the device, dataset indices) for
    every optimizer; no host-device synchronisation in a step (the loss is read once per --log-every steps)."""
    model.train()
    device = next(model.parameters()).device
    for step, (images, idx) in enumerate(batches):
        if schedule is not None:
            schedule(step)  # the step's learning rates
        on_device = idx.to(device, non_blocking=True)  # a no-op for in-memory data: its indices are there already
        target = labels[on_device]  # (B,) pseudo-labels of the batch
        with autocast(device, amp):
            loss = F.cross_entropy(model(images), target)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        if probing is not None:  # on the step's detached backbone features and the images' true labels
            probe, true_labels = probing
            probe.step(unwrap(model).features, true_labels[on_device])
        kill_point("mid-step")
        log.add(step, loss, len(idx))
    return log.finish()


def cluster_metrics(result: ClusteringResult, previous: np.ndarray | None, targets: np.ndarray) -> dict:
    """NMI against the previous epoch and the labels, ARI, accuracy, cluster statistics (paper, figure 2)."""
    sizes = cluster_sizes(result.assignments, result.num_clusters)
    has_labels = len(np.unique(targets)) > 1
    nonempty = sizes[sizes > 0]
    return {
        "nmi_prev": nmi(result.assignments, previous) if previous is not None else None,
        "nmi_labels": nmi(result.assignments, targets) if has_labels else None,
        "ari_labels": ari(result.assignments, targets) if has_labels else None,
        "acc_labels": cluster_accuracy(targets, result.assignments) if has_labels else None,
        "purity_labels": purity(targets, result.assignments) if has_labels else None,
        "num_clusters": int((sizes > 0).sum()),  # the non-empty clusters, as DeepCluster-v2 counts them
        "empty_clusters": result.empty_clusters,
        "reseeded_clusters": result.reseeded_clusters,
        "kmeans_objective": result.objective,
        "cluster_size_min": int(nonempty.min()),
        "cluster_size_median": float(np.median(nonempty)),
        "cluster_size_max": int(nonempty.max()),
        "cluster_size_entropy": size_entropy(sizes),
    }


if __name__ == "__main__":
    script_entry("DeepCluster pretraining", get_args_parser, main, DEPARTURES)
