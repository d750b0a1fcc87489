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

from models import Backbone, build_model
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
    checkpoint_path,
    load_checkpoint,
    load_state_strict,
    rng_states,
    save_assignments,
    save_checkpoint,
    set_rng_states,
)
from util.clustering import (
    ClusteringResult,
    check_k,
    cluster_sizes,
    pseudo_labels,
    run_clustering,
    torch_kmeans,
)
from util.data import ImageSource, build_source
from util.errors import UserError, script_entry
from util.features import extract_features
from util.logging import JsonLog, interactive, provenance
from util.metrics import ari, cluster_accuracy, nmi
from util.runtime import start_run
from util.sampler import UniformClusterSampler
from util.tracking import Tracker, init_tracker

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
  PIC                the number of clusters is found by PIC, not set by --k."""

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
)
EPOCH_METRICS = ("train/*", "cluster/*", "time/*")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster pretraining", add_help=False)
    add_model_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("clustering")
    group.add_argument(
        "--k", type=positive_int, default=None,
        help="number of clusters; over-cluster, about 10x the number of classes (paper: 10000 on ImageNet; "
        "default: 100 for cifar10, 10000 otherwise)",
    )  # fmt: skip
    group.add_argument(
        "--pca-dim",
        type=positive_int,
        default=256,
        help="PCA-whitening dimension (paper: 256)",
    )
    group.add_argument(
        "--pca-fit-samples", type=int, default=100_000,
        help="fit PCA on this many features (a fixed random sample) and reduce the rest on the fly, so the host never "
        "holds N x D features; 0 = fit on all (the paper). Identical to the paper whenever N <= this number",
    )  # fmt: skip
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
    add_runtime_args(parser)
    parser.add_argument(
        "--resume",
        default=None,
        help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pth if present)",
    )
    add_wandb_args(parser)
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
    return args


@dataclass
class RunState:
    """Everything that changes across epochs and must survive a restart."""

    epoch: int = 0
    assignments: np.ndarray | None = None  # clusters of the previous epoch, for NMI(t, t-1)
    cluster_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    wandb_run_id: str | None = None


def main(args: argparse.Namespace) -> None:
    # ---- set-up: processes, device, seeds, output folder
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir)
    args = finalize_args(args)
    logger.info("args: %s", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    logger.info(
        "effective batch %d (%d x %d processes); k=%d; device %s",
        args.batch_size * info.world_size, args.batch_size, info.world_size, args.k, device,
    )  # fmt: skip

    # ---- data
    source = build_source(
        args.data, "train", args.image_size, augment_preset(args.aug, args.image_size),
        args.subset, args.in_memory, args.workers, Path(args.data_cache),
    )  # fmt: skip
    if args.clustering == "kmeans":
        check_k(len(source), args.k)
    if len(source) <= args.pca_dim:
        raise UserError(
            f"{len(source)} images are too few for --pca-dim {args.pca_dim}: use more images or a smaller --pca-dim"
        )

    # ---- model, optimizer, resume
    backbone = build_model(args.arch, args.sobel).to(device)
    if args.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation): drop --sync-bn")
    if args.sync_bn and info.distributed:
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    state = restore(args, output_dir, backbone, optimizer)
    if state.epoch >= args.epochs:
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
    )
    state.wandb_run_id = tracker.run_id

    # ---- epochs: extract -> cluster -> pseudo-label -> train -> log -> checkpoint
    log = JsonLog(output_dir / "log.jsonl")
    for epoch in range(state.epoch, args.epochs):
        record = run_epoch(args, epoch, backbone, optimizer, source, state, device, info)
        state.epoch = epoch + 1
        if info.is_main:
            # log.jsonl before the checkpoint: a kill in between redoes the epoch, and the resume drops the
            # record written after the checkpoint it restarts from, so every epoch is logged exactly once.
            log.append(record)
            save_assignments(output_dir, epoch, state.assignments, record["num_clusters"])
            save_checkpoint(checkpoint_state(args, backbone, optimizer, state), checkpoint_path(output_dir))
            log_epoch(tracker, record, state.assignments)
        dist_util.barrier()
    tracker.finish()
    dist_util.cleanup()


def run_epoch(
    args: argparse.Namespace,
    epoch: int,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    source: ImageSource,
    state: RunState,
    device: torch.device,
    info: dist_util.DistInfo,
) -> dict:
    """One DeepCluster epoch (DESIGN section 3); returns the epoch's record for log.jsonl."""
    progress = interactive() and info.is_main
    # 1-2. extract features in eval mode, PCA-whiten and L2-normalise: (N, pca_dim)
    start = time.perf_counter()
    backbone.eval()
    features = extract_features(
        backbone, source, args.extract_batch_size, device, args.pca_dim, args.pca_fit_samples, progress,
        f"epoch {epoch} extract",
    )  # fmt: skip
    time_extract = time.perf_counter() - start

    # 3-4. cluster, pseudo-label over the non-empty clusters
    start = time.perf_counter()
    result = cluster(args, features, int(state.cluster_rng.integers(2**31)), device, info)
    labels, num_pseudo = pseudo_labels(result.assignments)
    time_cluster = time.perf_counter() - start

    # 5-7. sample uniformly over clusters, reset the head, train one epoch
    start = time.perf_counter()
    sampler = UniformClusterSampler(labels, len(source), args.seed, epoch, info.rank, info.world_size)
    head = new_head(backbone.feature_dim, num_pseudo, device)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=args.head_lr, momentum=0.0, weight_decay=args.wd)
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
    batches = source.train_batches(
        np.asarray(sampler.indices), args.batch_size, device, gen, info.rank, info.world_size
    )
    stats = train_one_epoch(
        backbone,
        head,
        (optimizer, head_optimizer),
        batches,
        torch.from_numpy(labels),
        device,
        epoch,
        args,
        progress,
    )
    time_train = time.perf_counter() - start

    # 8. metrics of this epoch's clustering
    record = {
        "epoch": epoch,
        "loss": stats["loss"],
        **cluster_metrics(result, state.assignments, source.targets),
        "time_extract": time_extract,
        "time_cluster": time_cluster,
        "time_train": time_train,
        "images_per_s": stats["images"] * info.world_size / max(time_train, 1e-9),
        "epoch_images_per_s": len(source) / max(time_extract + time_cluster + time_train, 1e-9),
    }
    state.assignments = result.assignments
    logger.info(
        "epoch %d/%d  loss %.4f  nmi_labels %s  nmi_prev %s  clusters %d (empty %d)  "
        "extract %.1fs  cluster %.1fs  train %.1fs  %.0f img/s",
        epoch, args.epochs, record["loss"], _fmt(record["nmi_labels"]), _fmt(record["nmi_prev"]),
        record["num_clusters"], record["empty_clusters"], time_extract, time_cluster, time_train,
        record["images_per_s"],
    )  # fmt: skip
    return record


def cluster(
    args: argparse.Namespace,
    features: torch.Tensor,
    seed: int,
    device: torch.device,
    info: dist_util.DistInfo,
) -> ClusteringResult:
    """k-means/PIC on rank 0 and broadcast, or the torch backend in place on every rank's shard."""
    if args.clustering == "kmeans" and args.kmeans_backend == "torch" and info.distributed:
        shard = features[info.rank :: info.world_size].to(device)
        local = torch_kmeans(shard, args.k, args.kmeans_iters, seed, distributed=True)
        gathered = dist_util.all_gather_rows(torch.from_numpy(local.assignments).to(device)).cpu().numpy()
        # all_gather_rows concatenates the shards in rank order; shard r holds rows r, r + W, r + 2W, ...
        lengths = [len(range(r, len(features), info.world_size)) for r in range(info.world_size)]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        assignments = np.empty(len(features), dtype=np.int64)
        for rank in range(info.world_size):
            assignments[rank :: info.world_size] = gathered[offsets[rank] : offsets[rank + 1]]
        sizes = cluster_sizes(assignments, args.k)
        return ClusteringResult(
            assignments,
            args.k,
            int((sizes == 0).sum()),
            local.reseeded_clusters,
            local.objective,
        )
    result = None
    if info.is_main:
        on_device = args.kmeans_backend == "torch" or args.clustering == "pic"
        result = run_clustering(
            features.to(device) if on_device else features, args.clustering, args.k, seed, args.kmeans_backend,
            args.kmeans_iters, args.pic_neighbors, args.pic_sigma, args.pic_alpha, args.pic_iters,
        )  # fmt: skip
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
    if torch.distributed.is_available() and torch.distributed.is_initialized():
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
        "num_clusters": result.num_clusters,
        "empty_clusters": result.empty_clusters,
        "reseeded_clusters": result.reseeded_clusters,
        "kmeans_objective": result.objective,
        "cluster_size_min": int(nonempty.min()),
        "cluster_size_median": float(np.median(nonempty)),
        "cluster_size_max": int(nonempty.max()),
    }


def log_epoch(tracker: Tracker, record: dict, assignments: np.ndarray) -> None:
    """Mirror the JSON record to W&B with the epoch as x-axis, plus the cluster-size histogram."""
    groups = {"loss": "train", "images_per_s": "train", "epoch_images_per_s": "train"}
    metrics = {"epoch": record["epoch"]}
    for key, value in record.items():
        if key != "epoch" and value is not None:
            prefix = groups.get(key, "time" if key.startswith("time_") else "cluster")
            metrics[f"{prefix}/{key}"] = value
    sizes = np.bincount(assignments)
    histogram = tracker.histogram(sizes[sizes > 0])
    if histogram is not None:
        metrics["cluster/size_histogram"] = histogram
    tracker.log(metrics)
    tracker.summary(
        {
            "final_nmi_labels": record["nmi_labels"],
            "final_loss": record["loss"],
            "epochs": record["epoch"] + 1,
        }
    )


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
        "cluster_rng": state.cluster_rng.bit_generator.state,
        "rng": rng_states(),
        "wandb_run_id": state.wandb_run_id,
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
    saved = ckpt.get("args", {})
    differing = [
        f"--{k.replace('_', '-')} {saved.get(k)} (now {getattr(args, k)})"
        for k in RUN_DEFINING_ARGS
        if k in saved and saved[k] != getattr(args, k)
    ]
    if differing:
        raise UserError(
            f"checkpoint {path} was made with {', '.join(differing)}: use the same flags or a new --output-dir"
        )
    load_state_strict(backbone, ckpt["backbone"], f"checkpoint {path}")
    optimizer.load_state_dict(ckpt["optimizer"])
    state.epoch = ckpt["epoch"]
    state.assignments = ckpt["assignments"].astype(np.int64)
    state.cluster_rng.bit_generator.state = ckpt["cluster_rng"]
    state.wandb_run_id = ckpt.get("wandb_run_id")
    set_rng_states(ckpt["rng"])
    if dist_util.env_info()[0].is_main:
        JsonLog(output_dir / "log.jsonl").truncate_after(state.epoch - 1)
    logger.info("resumed from %s at epoch %d", path, state.epoch)
    return state


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    script_entry("DeepCluster pretraining", get_args_parser, main, DEPARTURES)
