"""DeepCluster pretraining (Caron et al., ECCV 2018).

Every epoch: extract features of the whole training set -> PCA-whiten + L2-normalise -> k-means (or PIC) ->
pseudo-labels -> sample uniformly over clusters -> reset the classifier head -> train one epoch on the
pseudo-labels. Runs on a CPU, on one GPU, with torchrun, or on SLURM through slurm/submit.py.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import Backbone, build_model, check_image_size
from util import dist as dist_util
from util.args import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    add_wandb_args,
    positive_int,
)
from util.augment import AUGMENT_PRESETS, augment_preset
from util.checkpoint import (
    check_same_run,
    checkpoint_path,
    load_checkpoint,
    load_state_strict,
    rng_states,
    save_assignments,
    save_checkpoint,
    set_rng_states,
)
from util.data import ImageSource, build_source
from util.errors import UserError, script_entry
from util.faults import kill_point
from util.knn import StreamingKnn
from util.logging import JsonLog, interactive, provenance
from util.metrics import ari, cluster_accuracy, nmi, purity
from util.pretrain.clustering import (
    ClusteringResult,
    check_k,
    check_pic_neighbors,
    cluster_sizes,
    pseudo_labels,
    run_clustering,
    torch_kmeans,
)
from util.pretrain.epoch_log import log_epoch, log_epoch_line
from util.pretrain.features import extract_features
from util.pretrain.monitor import add_monitor_args, build_held_out, knn_metrics, resolve_knn_every
from util.pretrain.outputs import add_output_args, checkpoint_artifact, cluster_images
from util.pretrain.sampler import UniformClusterSampler
from util.runtime import start_run
from util.seeds import derive_seed
from util.tracking import init_tracker

logger = logging.getLogger("deepcluster")

DEPARTURES = """departures from the paper (Caron et al. 2018), each named so results can be read right:
  --pca-fit-samples  PCA is fit on a fixed random sample of 100k features (all of them when N <= 100k, as in
                     the paper) and later batches are reduced on the fly; the paper fits on all N.
  --in-memory        small datasets are decoded once to uint8 and augmented in batches on the device: bilinear
                     crops without antialiasing, colour jitter in a fixed order (torchvision: random order).
  --arch / --aug     defaults are ResNet-18 and, on cifar10, the `cifar` augmentation preset (32 px crops, flip,
                     jitter, grayscale); the paper is `--arch alexnet --sobel --aug paper` at 224 px.
  k-means            empty clusters are re-seeded by splitting a large cluster (faiss and torch backends), as the
                     original; clusters still empty at the end are dropped from the pseudo-labels and counted.
  PIC                the number of clusters is found by PIC, not set by --k.
  --reassign         dataset passes between two clusterings, as the original code's --reassign: 1 (the paper,
                     re-cluster every pass) for folder data, 2 by default on cifar10, where one pass (39-195 SGD
                     steps, against ImageNet's 5,000) per clustering keeps kNN below the random network's.
  --knn-every        not in the paper: a weighted kNN monitor (k=20, T=0.07) on a labelled held-out split, the
                     random network's value logged as the floor; it never influences training."""

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
)
EPOCH_METRICS = ("train/*", "cluster/*", "time/*", "monitor/*")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster pretraining", add_help=False)
    add_model_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("clustering")
    group.add_argument(
        "--k",
        type=positive_int,
        default=None,
        help="number of clusters; over-cluster, about 10x the number of classes (paper: 10000 on ImageNet; "
        "default: 100 for cifar10, 10000 otherwise)",
    )
    group.add_argument(
        "--pca-dim",
        type=positive_int,
        default=256,
        help="PCA-whitening dimension (paper: 256)",
    )
    group.add_argument(
        "--pca-fit-samples",
        type=int,
        default=100_000,
        help="fit PCA on this many features (a fixed random sample) and reduce the rest on the fly, so the host never "
        "holds N x D features; 0 = fit on all (the paper). Identical to the paper whenever N <= this number",
    )
    group.add_argument(
        "--clustering",
        choices=("kmeans", "pic"),
        default="kmeans",
        help="paper: kmeans (PIC also studied)",
    )
    group.add_argument(
        "--kmeans-backend",
        choices=("faiss", "torch"),
        default="faiss",
        help="faiss (CPU, or GPU with faiss-gpu) or pure torch on --device",
    )
    group.add_argument(
        "--kmeans-iters",
        type=positive_int,
        default=20,
        help="Lloyd iterations (paper: 20)",
    )
    group.add_argument(
        "--pic-neighbors",
        type=positive_int,
        default=5,
        help="PIC nearest-neighbour graph degree",
    )
    group.add_argument("--pic-sigma", type=float, default=0.2, help="PIC Gaussian kernel bandwidth")
    group.add_argument(
        "--pic-alpha",
        type=float,
        default=0.001,
        help="PIC weight of the diffusion term",
    )
    group.add_argument("--pic-iters", type=positive_int, default=200, help="PIC power iterations")
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--epochs",
        type=positive_int,
        default=500,
        help="total epochs (paper: 500; seed page: 200)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="images per step per process (paper: 256)",
    )
    group.add_argument(
        "--extract-batch-size",
        type=positive_int,
        default=None,
        help="images per forward at extraction (default: 2x --batch-size)",
    )
    group.add_argument(
        "--lr",
        type=float,
        default=0.05,
        help="backbone learning rate, constant (paper: 0.05)",
    )
    group.add_argument(
        "--head-lr",
        type=float,
        default=None,
        help="classifier head learning rate (default: --lr)",
    )
    group.add_argument(
        "--momentum",
        type=float,
        default=0.9,
        help="backbone SGD momentum; the head has none (paper)",
    )
    group.add_argument("--wd", type=float, default=1e-5, help="weight decay (paper: 1e-5)")
    group.add_argument(
        "--aug",
        choices=AUGMENT_PRESETS,
        default=None,
        help="augmentation preset (default: cifar for cifar10, else paper)",
    )
    group.add_argument(
        "--reassign",
        type=float,
        default=None,
        help="dataset passes of training between two clusterings (the original code's --reassign). Each epoch samples "
        "about reassign x N images uniformly over the clusters. Default: 1 (the paper) for folder data, 2 for cifar10, "
        "where re-clustering after every pass keeps kNN BELOW the random network's (README, 'Does it learn?')",
    )
    group.add_argument(
        "--labels-from",
        choices=("clusters", "dataset"),
        default="clusters",
        help="clusters: DeepCluster. dataset: train on the true labels instead, a SANITY CHECK of the training "
        "machinery (supervised, not DeepCluster; clustering still runs for its metrics)",
    )
    group.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast on CUDA",
    )
    group.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="SyncBatchNorm across GPUs",
    )
    add_monitor_args(parser)
    add_runtime_args(parser)
    parser.add_argument(
        "--resume",
        default=None,
        help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pth if present)",
    )
    add_output_args(parser)
    add_wandb_args(parser, pretraining=True)
    return parser


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the dataset; reject impossible combinations."""
    cifar = args.data == "cifar10"
    args.k = args.k or (100 if cifar else 10000)
    args.image_size = args.image_size or (32 if cifar else 224)
    args.in_memory = cifar if args.in_memory is None else args.in_memory
    args.aug = args.aug or ("cifar" if cifar else "paper")
    args.extract_batch_size = args.extract_batch_size or 2 * args.batch_size
    args.head_lr = args.lr if args.head_lr is None else args.head_lr
    if args.lr <= 0 or args.head_lr <= 0:
        raise UserError(f"--lr {args.lr} / --head-lr {args.head_lr} must be positive")
    if args.reassign is not None and args.reassign <= 0:
        raise UserError(f"--reassign {args.reassign} must be positive (dataset passes between two clusterings)")
    args.reassign = (2.0 if cifar else 1.0) if args.reassign is None else args.reassign
    resolve_knn_every(args)
    return args


@dataclass
class RunState:
    """Everything that changes across epochs and must survive a restart."""

    epoch: int = 0
    assignments: np.ndarray | None = None  # clusters of the previous epoch, for NMI(t, t-1)
    knn_floor: float | None = None  # kNN top-1 of the random network (epoch 0), shown beside every later value
    cluster_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    wandb_run_id: str | None = None
    wandb_group: str | None = None


def main(args: argparse.Namespace) -> None:
    # ---- set-up: processes, device, seeds, output folder
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir)
    args = finalize_args(args)
    logger.info("args: %s", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    logger.info(
        "effective batch %d (%d x %d processes); k=%d; device %s",
        args.batch_size * info.world_size,
        args.batch_size,
        info.world_size,
        args.k,
        device,
    )

    # ---- data
    source = build_source(
        data=args.data,
        split="train",
        crop=args.image_size,
        augment=augment_preset(args.aug, args.image_size),
        subset=args.subset,
        in_memory=args.in_memory,
        workers=args.workers,
        cache_dir=Path(args.data_cache),
    )
    if args.clustering == "kmeans":
        check_k(len(source), args.k)
    else:
        check_pic_neighbors(len(source), args.pic_neighbors)
    per_epoch = max(1, round(args.reassign * len(source)))  # the images an epoch trains on, all processes together
    if per_epoch // info.world_size < args.batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} x {info.world_size} process(es) is larger than the {per_epoch} images an "
            f"epoch trains on ({len(source)} images x --reassign {args.reassign:g}): lower --batch-size"
        )
    if len(source) <= args.pca_dim:
        raise UserError(
            f"{len(source)} images are too few for --pca-dim {args.pca_dim}: use more images or a smaller --pca-dim"
        )
    held_out = build_held_out(args, source) if args.knn_every > 0 else None
    if args.labels_from == "dataset":
        logger.warning("--labels-from dataset: training on the TRUE labels (a sanity check, not DeepCluster)")

    # ---- model, optimizer, resume
    backbone = build_model(args.arch, args.sobel).to(device)
    check_image_size(backbone, args.arch, args.image_size)
    if args.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation): drop --sync-bn")
    if args.sync_bn and info.distributed:
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    state = restore(args, output_dir, backbone, optimizer)
    log = JsonLog(output_dir / "log.jsonl")
    measured = any(r.get("final") and r["epoch"] == state.epoch for r in log.read()) if info.is_main else False
    measured = dist_util.broadcast_object(measured)
    if state.epoch > args.epochs or (state.epoch == args.epochs and measured):
        logger.info("%s already holds %d epochs; raise --epochs to train further", output_dir, state.epoch)
        dist_util.cleanup()
        return
    tracker = init_tracker(
        args,
        output_dir,
        "pretrain",
        {**vars(args), **provenance()},
        info.is_main,
        state.wandb_run_id,
        EPOCH_METRICS,
        group=state.wandb_group,
    )
    state.wandb_run_id, state.wandb_group = tracker.run_id, tracker.group

    # ---- epochs: extract -> cluster -> pseudo-label -> train -> log -> checkpoint; then measure the final network
    for epoch in range(state.epoch, args.epochs + 1):
        inputs = EpochInputs(source, held_out, device, info)
        if epoch == args.epochs:
            # Extract + cluster + monitor without training: the metrics of the weights in the last checkpoint. No
            # checkpoint follows, so a later run with a larger --epochs redoes this epoch with the same draws.
            record = run_epoch(args, epoch, backbone, optimizer, inputs, state, train=False)
            if info.is_main:
                log.append(record)
                log_epoch(tracker, record, None)
            break
        record = run_epoch(args, epoch, backbone, optimizer, inputs, state)
        state.epoch = epoch + 1
        if info.is_main:
            # log.jsonl before the checkpoint: a kill in between redoes the epoch, and the resume drops the
            # record written after the checkpoint it restarts from, so every epoch is logged exactly once.
            log.append(record)
            save_assignments(output_dir, epoch, state.assignments, record["num_clusters"])
            kill_point("after-log")
            save_checkpoint(checkpoint_state(args, backbone, optimizer, state), checkpoint_path(output_dir))
            log_epoch(tracker, record, state.assignments)
            cluster_images(args, tracker, output_dir, epoch, source.images, state.assignments)
            checkpoint_artifact(args, tracker, checkpoint_path(output_dir), state.epoch)
        dist_util.barrier()
    tracker.finish()
    dist_util.cleanup()


@dataclass
class EpochInputs:
    """What every epoch reads: the training images, the labelled held-out split of the monitor, where to run."""

    source: ImageSource
    held_out: ImageSource | None
    device: torch.device
    info: dist_util.DistInfo


def run_epoch(
    args: argparse.Namespace,
    epoch: int,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    inputs: EpochInputs,
    state: RunState,
    train: bool = True,
) -> dict:
    """One DeepCluster epoch (DESIGN section 3); returns the epoch's record for log.jsonl. Its clustering and kNN
    are those of the network after `epoch` epochs of training; train=False measures them without training."""
    source, device, info = inputs.source, inputs.device, inputs.info
    progress = interactive() and info.is_main
    # 0. the monitor's held-out features, when due: (M, D) raw backbone features
    start = time.perf_counter()
    backbone.eval()
    dist_util.broadcast_buffers(backbone)  # every rank extracts with rank 0's BatchNorm statistics, the saved ones
    monitor, held_out_feats = None, None
    if inputs.held_out is not None and (epoch % args.knn_every == 0 or not train):
        held_out_feats = extract_features(backbone, inputs.held_out, args.extract_batch_size, device)
        monitor = StreamingKnn(held_out_feats.to(device), len(source.images.classes), args.knn_k, args.knn_temperature)
    targets = torch.from_numpy(source.targets)

    def stream_to_monitor(raw: torch.Tensor, idx: torch.Tensor) -> None:
        monitor.update(raw, targets[idx])

    time_monitor = time.perf_counter() - start
    # 1-2. extract features in eval mode, PCA-whiten and L2-normalise: (N, pca_dim); the monitor sees the raw ones
    start = time.perf_counter()
    features = extract_features(
        backbone,
        source,
        args.extract_batch_size,
        device,
        pca_dim=args.pca_dim,
        pca_fit_samples=args.pca_fit_samples,
        progress=progress,
        desc=f"epoch {epoch} extract",
        on_raw_batch=stream_to_monitor if monitor is not None else None,
    )
    time_extract = time.perf_counter() - start
    start = time.perf_counter()
    knn = {}
    if monitor is not None:
        knn = knn_metrics(monitor, held_out_feats, inputs.held_out.targets, args.kmeans_iters, args.seed + epoch)
    time_monitor += time.perf_counter() - start
    if epoch == 0 and "knn_top1" in knn:
        state.knn_floor = knn["knn_top1"]

    # 3-4. cluster, pseudo-label over the non-empty clusters
    start = time.perf_counter()
    result = cluster(args, features, int(state.cluster_rng.integers(2**31)), device, info)
    labels, num_pseudo = pseudo_labels(result.assignments)
    time_cluster = time.perf_counter() - start

    # 5-7. sample uniformly over clusters, reset the head, train one epoch
    start = time.perf_counter()
    stats = {"loss": None, "images": 0}
    if train:
        if args.labels_from == "dataset":  # sanity check: the true labels stand in for the clusters
            labels, num_pseudo = source.targets.copy(), len(source.images.classes)
        stats = train_on_labels(args, epoch, backbone, optimizer, inputs, labels, num_pseudo, progress)
    time_train = time.perf_counter() - start

    # 8. metrics of this epoch's clustering and of the monitor
    record = {
        "epoch": epoch,
        "loss": stats["loss"],
        **cluster_metrics(result, state.assignments, source.targets),
        **knn,
        "time_monitor": time_monitor,
        "time_extract": time_extract,
        "time_cluster": time_cluster,
        "time_train": time_train,
        "train_images": stats["images"] * info.world_size,  # about --reassign x N, in whole batches
        "images_per_s": stats["images"] * info.world_size / max(time_train, 1e-9),
        "epoch_images_per_s": len(source) / max(time_extract + time_cluster + time_train, 1e-9),
    }
    if knn:
        record["knn_floor"] = state.knn_floor
    if not train:
        record["final"] = True
    else:
        state.assignments = result.assignments
    log_epoch_line(record, args.epochs, state.knn_floor, ("extract", "cluster", "train"))
    return record


def train_on_labels(
    args: argparse.Namespace,
    epoch: int,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    inputs: EpochInputs,
    labels: np.ndarray,
    num_classes: int,
    progress: bool,
) -> dict:
    """Steps 5-7: about --reassign x N images drawn uniformly over the clusters, a fresh head, one epoch of SGD."""
    info = inputs.info
    num_samples = max(1, round(args.reassign * len(inputs.source)))
    sampler = UniformClusterSampler(labels, num_samples, args.seed, epoch, info.rank, info.world_size)
    head = new_head(backbone.feature_dim, num_classes, inputs.device)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=args.head_lr, momentum=0.0, weight_decay=args.wd)
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "pretrain-batches", epoch))
    batches = inputs.source.train_batches(
        np.asarray(sampler.indices), args.batch_size, inputs.device, gen, info.rank, info.world_size
    )
    return train_one_epoch(
        backbone,
        head,
        (optimizer, head_optimizer),
        batches,
        torch.from_numpy(labels),
        inputs.device,
        epoch,
        args,
        progress,
    )


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
        result = run_clustering(
            features.to(device) if on_device else features,
            method=args.clustering,
            k=args.k,
            seed=seed,
            backend=args.kmeans_backend,
            niter=args.kmeans_iters,
            pic_neighbors=args.pic_neighbors,
            pic_sigma=args.pic_sigma,
            pic_alpha=args.pic_alpha,
            pic_iters=args.pic_iters,
            use_gpu=device.type == "cuda",
        )
    return dist_util.broadcast_object(result)


def new_head(feature_dim: int, num_classes: int, device: torch.device) -> nn.Linear:
    """A fresh classifier every epoch (paper, section 3.4): N(0, 0.01) weights, zero bias."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    return head.to(device)


class PseudoLabelNet(nn.Module):
    """backbone -> its head activation (ReLU after fc7 for AlexNet/VGG) -> classifier over the clusters."""

    def __init__(self, backbone: Backbone, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.head_activation(self.backbone(x)))


def train_one_epoch(
    backbone: Backbone,
    head: nn.Linear,
    optimizers: tuple[torch.optim.Optimizer, ...],
    batches,
    labels: torch.Tensor,
    device: torch.device,
    epoch: int,
    args: argparse.Namespace,
    progress: bool,
) -> dict:
    """Cross-entropy on the pseudo-labels over the sampled images; returns the averages."""
    model: nn.Module = PseudoLabelNet(backbone, head)
    if dist_util.current().distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    total_loss, num_images = 0.0, 0
    use_amp = args.amp and device.type == "cuda"
    for step, (images, idx) in enumerate(tqdm(batches, desc=f"epoch {epoch} train", disable=not progress, leave=False)):
        target = labels[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(images), target)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss is {loss.item()} at epoch {epoch} step {step}: lower --lr; the last checkpoint is kept"
            )
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        kill_point("mid-step")
        total_loss += loss.item() * len(idx)
        num_images += len(idx)
    if num_images == 0:
        raise UserError(f"no training step ran: --batch-size {args.batch_size} is larger than the dataset")
    return {"loss": total_loss / num_images, "images": num_images}


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
        "num_clusters": result.num_clusters,
        "empty_clusters": result.empty_clusters,
        "reseeded_clusters": result.reseeded_clusters,
        "kmeans_objective": result.objective,
        "cluster_size_min": int(nonempty.min()),
        "cluster_size_median": float(np.median(nonempty)),
        "cluster_size_max": int(nonempty.max()),
    }


def checkpoint_state(
    args: argparse.Namespace,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    state: RunState,
) -> dict:
    return {
        "epoch": state.epoch,
        "arch": args.arch,
        "sobel": args.sobel,
        "args": vars(args),
        "backbone": unwrap(backbone).state_dict(),
        "optimizer": optimizer.state_dict(),
        "assignments": state.assignments.astype(np.int32),
        "knn_floor": state.knn_floor,
        "cluster_rng": state.cluster_rng.bit_generator.state,
        "rng": rng_states(),
        "wandb_run_id": state.wandb_run_id,
        "wandb_group": state.wandb_group,
        "provenance": provenance(),
    }


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def restore(
    args: argparse.Namespace,
    output_dir: Path,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
) -> RunState:
    """Resume from --resume or OUTPUT_DIR/checkpoint.pth, strictly; else a fresh state from --seed."""
    state = RunState(cluster_rng=np.random.default_rng(args.seed))
    path = Path(args.resume) if args.resume else checkpoint_path(output_dir)
    if not args.resume and not path.is_file():
        return state
    ckpt = load_checkpoint(path)
    check_same_run(ckpt.get("args", {}), args, RUN_DEFINING_ARGS, path)
    load_state_strict(backbone, ckpt["backbone"], f"checkpoint {path}")
    optimizer.load_state_dict(ckpt["optimizer"])
    state.epoch = ckpt["epoch"]
    state.assignments = ckpt["assignments"].astype(np.int64)
    state.cluster_rng.bit_generator.state = ckpt["cluster_rng"]
    state.wandb_run_id = ckpt.get("wandb_run_id")
    state.wandb_group = ckpt.get("wandb_group")
    state.knn_floor = ckpt.get("knn_floor")
    set_rng_states(ckpt["rng"])
    if dist_util.env_info()[0].is_main:
        JsonLog(output_dir / "log.jsonl").truncate_after(state.epoch - 1)
    logger.info("resumed from %s at epoch %d", path, state.epoch)
    return state


if __name__ == "__main__":
    script_entry("DeepCluster pretraining", get_args_parser, main, DEPARTURES)
