"""DeepCluster-v2 pretraining (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020, the SwAV paper).

Every epoch: spherical k-means of the memory bank (the embeddings of every image's assignment crops, written
during the previous epoch), once per prototype head -> the centroids become that head's frozen prototypes and the
assignments its targets -> one epoch of multi-crop training: cross-entropy of every crop's (embedding . prototypes)
/ temperature against its image's assignment, averaged over the heads, LARS with warmup + cosine; each step writes
its embeddings back into the bank. Shares data, models, checkpoints, processes, W&B and the evaluations with
main_deepcluster.py.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import build_model, check_image_size
from models.dcv2 import MultiCropNet, ProjectionPrototypes
from util import dist as dist_util
from util.args import add_data_args, add_model_args, add_runtime_args, add_wandb_args, positive_int
from util.augment import AugmentSpec, augment_preset, multicrop_specs
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
from util.eval.results import protocol_notes
from util.faults import kill_point
from util.knn import StreamingKnn
from util.logging import JsonLog, interactive, provenance
from util.metrics import nmi
from util.pretrain.bank import MemoryBank
from util.pretrain.epoch_log import log_epoch, log_epoch_line
from util.pretrain.features import extract_features
from util.pretrain.lars import LARS, warmup_cosine
from util.pretrain.monitor import add_monitor_args, build_held_out, knn_metrics, resolve_knn_every
from util.pretrain.outputs import add_output_args, checkpoint_artifact, cluster_images
from util.pretrain.spherical import IGNORE, SphericalResult, spherical_kmeans
from util.runtime import start_run
from util.seeds import derive_seed
from util.tracking import init_tracker

logger = logging.getLogger("deepcluster")

DEPARTURES = """departures from SwAV's main_deepclusterv2.py (Caron et al. 2020), named so results read right:
  memory bank   kept in dataset-index order and the same on every process (each step's embeddings are gathered),
                not one bank per process: a checkpoint resumes on any number of processes. As SwAV's, the next
                clustering sees only the images written during the previous epoch.
  k-means       each process scores its share of the bank; sums are exact fixed-point integers, so the clustering
                is the same whatever the number of processes (SwAV: float sums, rank-dependent rounding). The
                initial centroids are bank rows drawn from --seed (SwAV: drawn on rank 0 and broadcast).
  --in-memory   cifar10 is decoded once to uint8 and augmented in batches on the device: bilinear crops without
                antialiasing, colour jitter in a fixed order (torchvision: random order), blur with 13 taps.
  cifar10       ResNet-18 with the CIFAR stem, two 32 px crops (scale 0.08-1), no blur, batch 256, 3 x 3000
                prototypes, LARS lr 0.6 x batch/256 with solo-learn's options (trust 0.02, clipped, biases and
                BatchNorm excluded), final lr base/1000: solo-learn's CIFAR recipe, not SwAV's (ImageNet only),
                except no blur (solo-learn: p=0.5; --blur), 200 epochs with 10 of warmup (solo-learn: 1000 and
                11) and ImageNet's mean/std to normalise (solo-learn: CIFAR-10's).
  --base-lr     default 0.3 x effective batch / 256 on ImageNet (SwAV's 4.8 at 4096, scaled linearly; warmup from
                1/16 of it, SwAV's 0.3 for 4.8).
  --amp         bf16 autocast for the backbone and the projection's hidden layer; the last projection layer, the
                normalisation and the prototype scores stay float32 (SwAV: no mixed precision; solo-learn: fp16).
  --sync-bn     SyncBatchNorm across all processes (SwAV's scripts: groups of 8 GPUs).
  blur          13 taps (SwAV: cv2 with 23 taps at 224 px), sigma 0.1-2 px as SwAV.
  --warmup-epochs  default min(10, epochs / 10): SwAV's 10 of 800, shortened for short runs.
  --knn-every   not in the paper: a weighted kNN monitor (k=20, T=0.07) of the backbone's pooled features on a
                labelled held-out split, the random network's value logged as the floor; never used for training."""

# Arguments that define a run: resuming an output folder with other values would mix two experiments.
RUN_DEFINING_ARGS = (
    "arch",
    "sobel",
    "data",
    "subset",
    "image_size",
    "nmb_crops",
    "size_crops",
    "min_scale_crops",
    "max_scale_crops",
    "crops_for_assign",
    "blur",
    "nmb_prototypes",
    "temperature",
    "kmeans_iters",
    "labels_from",
    "feat_dim",
    "hidden_mlp",
    "epochs",
)
EPOCH_METRICS = ("train/*", "cluster/*", "time/*", "monitor/*")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster-v2 pretraining", add_help=False)
    add_model_args(parser, default_arch=None)
    add_data_args(parser)
    group = parser.add_argument_group("multi-crop (SwAV's flags)")
    group.add_argument(
        "--nmb-crops",
        type=positive_int,
        nargs="+",
        default=None,
        help="crops per resolution (ImageNet: 2 6; cifar10: 2)",
    )
    group.add_argument(
        "--size-crops",
        type=positive_int,
        nargs="+",
        default=None,
        help="crop sizes in px (ImageNet: 224 96, i.e. --image-size and 96/224 of it; cifar10: 32)",
    )
    group.add_argument(
        "--min-scale-crops",
        type=float,
        nargs="+",
        default=None,
        help="smallest crop areas (ImageNet: 0.14 0.05; cifar10: 0.08)",
    )
    group.add_argument(
        "--max-scale-crops",
        type=float,
        nargs="+",
        default=None,
        help="largest crop areas (ImageNet: 1 0.14; cifar10: 1)",
    )
    group.add_argument(
        "--crops-for-assign",
        type=int,
        nargs="+",
        default=[0, 1],
        help="crops whose embeddings fill the memory bank; head h clusters bank view h mod their number (default: 0 1)",
    )
    group.add_argument(
        "--blur",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Gaussian blur p=0.5, sigma 0.1-2 px (default: on for folders, as SwAV on ImageNet; off for cifar10)",
    )
    group = parser.add_argument_group("DeepCluster-v2")
    group.add_argument("--feat-dim", type=positive_int, default=128, help="embedding dimension (SwAV: 128)")
    group.add_argument("--hidden-mlp", type=positive_int, default=2048, help="projection hidden units (SwAV: 2048)")
    group.add_argument(
        "--nmb-prototypes",
        type=positive_int,
        nargs="+",
        default=[3000, 3000, 3000],
        help="clusters of each prototype head (SwAV: 3000 3000 3000)",
    )
    group.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (SwAV: 0.1)")
    group.add_argument("--kmeans-iters", type=positive_int, default=10, help="spherical k-means updates (SwAV: 10)")
    group.add_argument(
        "--labels-from",
        choices=("clusters", "dataset"),
        default="clusters",
        help="clusters: DeepCluster-v2. dataset: every head's targets are the TRUE labels and its first prototypes the "
        "class means of the bank, a SANITY CHECK of the training machinery (supervised, not DeepCluster-v2)",
    )
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=positive_int, default=None, help="total epochs (ImageNet: 800; cifar10: 200)")
    group.add_argument(
        "--batch-size", type=positive_int, default=None, help="images per step per process (ImageNet: 64; cifar10: 256)"
    )
    group.add_argument(
        "--base-lr",
        type=float,
        default=None,
        help="LARS learning rate after warmup (default: 0.3 x effective batch / 256 on ImageNet, SwAV's 4.8 at 4096; "
        "0.6 x effective batch / 256 on cifar10)",
    )
    group.add_argument(
        "--final-lr", type=float, default=None, help="learning rate at the last step (default: base / 1000)"
    )
    group.add_argument(
        "--warmup-epochs", type=float, default=None, help="linear warmup (default: min(10, epochs / 10))"
    )
    group.add_argument(
        "--start-warmup",
        type=float,
        default=None,
        help="learning rate at the first step (ImageNet: base / 16, SwAV's 0.3 for 4.8; cifar10: 0)",
    )
    group.add_argument("--wd", type=float, default=1e-6, help="weight decay (SwAV: 1e-6)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (SwAV: 0.9)")
    group.add_argument(
        "--trust", type=float, default=None, help="LARS trust coefficient (ImageNet: SwAV's 0.001; cifar10: 0.02)"
    )
    group.add_argument(
        "--lars-clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cap each tensor's LARS rate at the learning rate (ImageNet: off, SwAV; cifar10: on)",
    )
    group.add_argument(
        "--lars-exclude-1d",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain SGD without weight decay for biases and BatchNorm (ImageNet: off, SwAV; cifar10: on)",
    )
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bf16 autocast on CUDA")
    group.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SyncBatchNorm across GPUs (default: on with several CUDA processes, as SwAV)",
    )
    group = add_monitor_args(parser)
    group.add_argument(
        "--extract-batch-size",
        type=positive_int,
        default=None,
        help="images per forward of the monitor (default: 2x --batch-size)",
    )
    add_runtime_args(parser)
    parser.add_argument(
        "--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pth if present)"
    )
    add_output_args(parser)
    add_wandb_args(parser, pretraining=True)
    return parser


def finalize_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Fill the defaults of the recipe (cifar10 or ImageNet-like folders); reject impossible combinations."""
    cifar = args.data == "cifar10"
    args.arch = args.arch or ("resnet18_cifar" if cifar else "resnet50")
    args.image_size = args.image_size or (32 if cifar else 224)
    args.in_memory = cifar if args.in_memory is None else args.in_memory
    args.nmb_crops = args.nmb_crops or ([2] if cifar else [2, 6])
    small = max(1, round(args.image_size * 96 / 224))  # SwAV's 96 px at 224, scaled with --image-size
    args.size_crops = args.size_crops or ([args.image_size] if cifar else [args.image_size, small])
    args.min_scale_crops = args.min_scale_crops or ([0.08] if cifar else [0.14, 0.05])
    args.max_scale_crops = args.max_scale_crops or ([1.0] if cifar else [1.0, 0.14])
    args.blur = (not cifar) if args.blur is None else args.blur  # SwAV on ImageNet; not in the CIFAR recipe
    args.epochs = args.epochs or (200 if cifar else 800)
    args.batch_size = args.batch_size or (256 if cifar else 64)
    args.extract_batch_size = args.extract_batch_size or 2 * args.batch_size
    effective = args.batch_size * world_size
    args.base_lr = args.base_lr if args.base_lr is not None else (0.6 if cifar else 0.3) * effective / 256
    args.final_lr = args.final_lr if args.final_lr is not None else args.base_lr / 1000
    args.warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else min(10.0, args.epochs / 10)
    # SwAV warms up from 0.3 to 4.8 (1/16 of the peak); solo-learn's CIFAR recipe from 0
    args.start_warmup = args.start_warmup if args.start_warmup is not None else (0.0 if cifar else args.base_lr / 16)
    args.trust = args.trust if args.trust is not None else (0.02 if cifar else 0.001)
    args.lars_clip = cifar if args.lars_clip is None else args.lars_clip
    args.lars_exclude_1d = cifar if args.lars_exclude_1d is None else args.lars_exclude_1d
    lengths = {len(args.nmb_crops), len(args.size_crops), len(args.min_scale_crops), len(args.max_scale_crops)}
    if len(lengths) != 1:
        raise UserError(
            "--nmb-crops, --size-crops, --min-scale-crops and --max-scale-crops need one value per resolution (got "
            f"{args.nmb_crops}, {args.size_crops}, {args.min_scale_crops}, {args.max_scale_crops}): give all four"
        )
    for low, high in zip(args.min_scale_crops, args.max_scale_crops, strict=True):
        if not 0 < low <= high <= 1:
            raise UserError(f"crop scales {low}-{high}: need 0 < --min-scale-crops <= --max-scale-crops <= 1")
    num_crops = sum(args.nmb_crops)
    if not args.crops_for_assign or any(c < 0 or c >= num_crops for c in args.crops_for_assign):
        raise UserError(f"--crops-for-assign {args.crops_for_assign}: each must be a crop index in 0..{num_crops - 1}")
    if len(set(args.crops_for_assign)) != len(args.crops_for_assign):
        raise UserError(f"--crops-for-assign {args.crops_for_assign} repeats a crop: give distinct crop indices")
    for name in ("base_lr", "temperature", "trust"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be positive")
    if min(args.final_lr, args.start_warmup, args.warmup_epochs, args.wd) < 0:
        raise UserError("--final-lr, --start-warmup, --warmup-epochs and --wd must be >= 0")
    resolve_knn_every(args)
    return args


@dataclass
class RunState:
    """Everything that changes across epochs and must survive a restart (the bank is saved beside it)."""

    epoch: int = 0
    assignments: np.ndarray | None = None  # head 0's assignments of the previous epoch, for NMI(t, t-1)
    knn_floor: float | None = None
    wandb_run_id: str | None = None
    wandb_group: str | None = None


@dataclass
class Run:
    """What every epoch reads and writes."""

    args: argparse.Namespace
    source: ImageSource
    held_out: ImageSource | None
    model: MultiCropNet
    optimizer: LARS
    bank: MemoryBank
    specs: list[AugmentSpec]
    schedule: np.ndarray
    steps_per_epoch: int
    device: torch.device
    info: dist_util.DistInfo


def main(args: argparse.Namespace) -> None:
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir)
    args = finalize_args(args, info.world_size)
    logger.info("args: %s", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))

    # ---- data
    specs = multicrop_specs(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops, args.blur)
    source = build_source(
        data=args.data,
        split="train",
        crop=args.image_size,
        augment=augment_preset("paper", args.image_size),  # unused: training reads the multi-crop specs
        subset=args.subset,
        in_memory=args.in_memory,
        workers=args.workers,
        cache_dir=Path(args.data_cache),
    )
    steps_per_epoch = -(-len(source) // info.world_size) // args.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {args.batch_size} x {info.world_size} process(es) is larger than the {len(source)} images: "
            "lower --batch-size"
        )
    seen = steps_per_epoch * args.batch_size * info.world_size  # bank rows written per epoch (at most)
    if min(seen, len(source)) < max(args.nmb_prototypes):
        raise UserError(
            f"the memory bank holds {min(seen, len(source))} images per epoch, fewer than --nmb-prototypes "
            f"{max(args.nmb_prototypes)}: lower --nmb-prototypes (or use more images)"
        )
    held_out = build_held_out(args, source) if args.knn_every > 0 else None
    if args.labels_from == "dataset":
        if len(source.images.classes) > min(args.nmb_prototypes):
            raise UserError(f"--labels-from dataset needs --nmb-prototypes >= the {len(source.images.classes)} classes")
        logger.warning("--labels-from dataset: training on the TRUE labels (a sanity check, not DeepCluster-v2)")

    # ---- model, optimizer, memory bank, resume
    backbone = build_model(args.arch, args.sobel)
    for size in sorted({args.image_size, *args.size_crops}):
        check_image_size(backbone, args.arch, size)
    head = ProjectionPrototypes(backbone.feature_dim, args.hidden_mlp, args.feat_dim, args.nmb_prototypes)
    model = MultiCropNet(backbone, head).to(device)
    sync_bn = args.sync_bn if args.sync_bn is not None else (info.distributed and device.type == "cuda")
    if sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation): drop --sync-bn")
    if sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trained = [p for p in model.parameters() if p.requires_grad]  # the prototypes are set by k-means, never trained
    optimizer = LARS(
        trained,
        lr=args.base_lr,
        momentum=args.momentum,
        weight_decay=args.wd,
        trust=args.trust,
        clip=args.lars_clip,
        exclude_1d=args.lars_exclude_1d,
    )
    bank = MemoryBank(len(args.crops_for_assign), len(source), args.feat_dim, device)
    state = restore(args, output_dir, model, optimizer, bank)
    log = JsonLog(output_dir / "log.jsonl")
    measured = any(r.get("final") and r["epoch"] == state.epoch for r in log.read()) if info.is_main else False
    if dist_util.broadcast_object(measured) and state.epoch >= args.epochs:
        logger.info(
            "%s already holds %d epochs (its schedule ends there): use a new --output-dir", output_dir, state.epoch
        )
        dist_util.cleanup()
        return
    schedule = warmup_cosine(
        args.base_lr, args.final_lr, args.epochs, steps_per_epoch, args.warmup_epochs, args.start_warmup
    )
    logger.info(
        "effective batch %d (%d x %d processes), %d steps an epoch, %d crops, heads %s, device %s",
        args.batch_size * info.world_size,
        args.batch_size,
        info.world_size,
        steps_per_epoch,
        sum(args.nmb_crops),
        args.nmb_prototypes,
        device,
    )
    config = {**vars(args), **provenance(), "departures": protocol_notes(DEPARTURES)}
    tracker = init_tracker(
        args, output_dir, "pretrain", config, info.is_main, state.wandb_run_id, EPOCH_METRICS, group=state.wandb_group
    )
    state.wandb_run_id, state.wandb_group = tracker.run_id, tracker.group
    run = Run(args, source, held_out, model, optimizer, bank, specs, schedule, steps_per_epoch, device, info)

    # ---- epochs: (fill the bank) -> cluster the bank -> train -> log -> checkpoint; then measure the final network
    for epoch in range(state.epoch, args.epochs + 1):
        final = epoch == args.epochs
        record, assignments = run_epoch(run, epoch, state, train=not final)
        if final:
            if info.is_main:
                log.append(record)
                log_epoch(tracker, record, None)
            break
        state.epoch, state.assignments = epoch + 1, assignments
        if info.is_main:
            log.append(record)  # before the checkpoint: see main_deepcluster.py
            save_assignments(output_dir, epoch, assignments, max(args.nmb_prototypes))
            kill_point("after-log")
            save_checkpoint(checkpoint_state(args, model, optimizer, bank, state), checkpoint_path(output_dir))
            log_epoch(tracker, record, assignments[assignments >= 0])
            cluster_images(args, tracker, output_dir, epoch, source.images, assignments)
            checkpoint_artifact(args, tracker, checkpoint_path(output_dir), state.epoch)
        dist_util.barrier()
    tracker.finish()
    dist_util.cleanup()


def run_epoch(run: Run, epoch: int, state: RunState, train: bool = True) -> tuple[dict, np.ndarray]:
    """One DeepCluster-v2 epoch; returns its record for log.jsonl and head 0's assignments. Its kNN is of the
    network after `epoch` epochs; train=False measures the final network and its clustering without training."""
    args, info = run.args, run.info
    progress = interactive() and info.is_main
    backbone = unwrap(run.model).backbone
    start = time.perf_counter()
    knn = {}
    if run.held_out is not None and (epoch % args.knn_every == 0 or not train):
        knn = monitor(run, backbone, epoch, progress)
        if epoch == 0:
            state.knn_floor = knn["knn_top1"]
    time_monitor = time.perf_counter() - start

    start = time.perf_counter()
    if epoch == 0 and not run.bank.fresh.any():
        fill_bank(run, progress)
    run.bank.rotate()
    results = cluster_bank(run, epoch)
    time_cluster = time.perf_counter() - start

    start = time.perf_counter()
    stats = {"loss": None, "images": 0, "lr": None}
    if train:
        stats = train_one_epoch(run, epoch, [r.assignments for r in results], progress)
    time_train = time.perf_counter() - start

    assignments = results[0].assignments.numpy()
    record = {
        "epoch": epoch,
        "loss": stats["loss"],
        "lr": stats["lr"],
        **cluster_metrics(results, state.assignments, run.source.targets),
        **knn,
        "time_monitor": time_monitor,
        "time_cluster": time_cluster,
        "time_train": time_train,
        "train_images": stats["images"] * info.world_size,
        "images_per_s": stats["images"] * info.world_size / max(time_train, 1e-9),
    }
    if knn:
        record["knn_floor"] = state.knn_floor
    if not train:
        record["final"] = True
    log_epoch_line(record, args.epochs, state.knn_floor, ("monitor", "cluster", "train"))
    return record, assignments


def monitor(run: Run, backbone: nn.Module, epoch: int, progress: bool) -> dict:
    """The kNN monitor of the backbone's pooled features: training images (the deterministic view) vote for the
    held-out split. Every rank streams its share of the training images; BatchNorm statistics are rank 0's."""
    backbone.eval()
    dist_util.broadcast_buffers(backbone)
    held_out_feats = extract_features(backbone, run.held_out, run.args.extract_batch_size, run.device)
    knn = StreamingKnn(
        held_out_feats.to(run.device), len(run.source.images.classes), run.args.knn_k, run.args.knn_temperature
    )
    targets = torch.from_numpy(run.source.targets)
    mine = dist_util.shard(np.arange(len(run.source)), run.info, wrap=False)
    batches = run.source.eval_batches(mine, run.args.extract_batch_size, run.device)
    with torch.inference_mode():
        for images, idx in tqdm(batches, desc=f"epoch {epoch} monitor", disable=not progress, leave=False):
            knn.update(backbone(images), targets[idx])
    backbone.train()
    return knn_metrics(knn, held_out_feats, run.held_out.targets, 20, run.args.seed + epoch)


@torch.no_grad()
def fill_bank(run: Run, progress: bool) -> None:
    """Before the first epoch, a no-grad pass in training mode over every image's assignment crops (SwAV's
    init_memory; as there, BatchNorm's running statistics follow the pass)."""
    args, info = run.args, run.info
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "v2-bank-fill", 0))
    specs = [run.specs[c] for c in args.crops_for_assign]
    mine = dist_util.shard(np.arange(len(run.source)), info, wrap=True)
    model = unwrap(run.model)
    model.train()
    batch = args.extract_batch_size
    tail = len(mine) % batch  # every image, the last partial batch included
    for part, size in ((mine[: len(mine) - tail], batch), (mine[len(mine) - tail :], tail)):
        if size == 0:
            continue
        crops = run.source.multicrop_batches(part, specs, size, run.device, gen, info.rank, info.world_size)
        for views, idx in tqdm(crops, desc="fill memory bank", disable=not progress, leave=False):
            embeddings, _ = model(views)
            run.bank.write(idx, embeddings.reshape(len(views), len(idx), -1))


def cluster_bank(run: Run, epoch: int) -> list:
    """Per head: spherical k-means of its bank view; the centroids become its prototypes."""
    args = run.args
    head = unwrap(run.model).head
    results = []
    for h, k in enumerate(args.nmb_prototypes):
        view = h % len(args.crops_for_assign)
        seed = derive_seed(args.seed, "v2-kmeans", epoch * len(args.nmb_prototypes) + h)
        if args.labels_from == "dataset":
            result = class_means(run.bank.embeddings[view], run.bank.usable, torch.from_numpy(run.source.targets), k)
        else:
            result = spherical_kmeans(run.bank.embeddings[view], run.bank.usable, k, args.kmeans_iters, seed)
        with torch.no_grad():
            head.prototypes[h].weight.copy_(result.centroids)
        results.append(result)
    return results


def class_means(points: torch.Tensor, usable: torch.Tensor, labels: torch.Tensor, k: int) -> SphericalResult:
    """The sanity check's clustering: the true labels as assignments, the normalised class means of the bank as the
    first prototypes (the others are zero and never a target)."""
    assignments = torch.where(usable, labels, torch.full_like(labels, IGNORE))
    sums = torch.zeros(k, points.shape[1], dtype=torch.float64, device=points.device)
    sums.index_add_(0, labels[usable].to(points.device), points[usable.to(points.device)].double())
    counts = torch.bincount(labels[usable], minlength=k)
    centroids = F.normalize(sums, dim=1).float()
    return SphericalResult(centroids, assignments, counts)


def train_one_epoch(run: Run, epoch: int, targets: list[torch.Tensor], progress: bool) -> dict:
    """Multi-crop steps over a fresh permutation of the images; each step writes its embeddings into the bank."""
    args, info, device = run.args, run.info, run.device
    order = torch.randperm(
        len(run.source), generator=torch.Generator().manual_seed(derive_seed(args.seed, "v2-order", epoch))
    )
    mine = dist_util.shard(order.numpy(), info, wrap=True)[: run.steps_per_epoch * args.batch_size]
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "pretrain-batches", epoch))
    batches = run.source.multicrop_batches(mine, run.specs, args.batch_size, device, gen, info.rank, info.world_size)
    model: nn.Module = run.model
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    num_crops = len(run.specs)
    use_amp = args.amp and device.type == "cuda"
    total_loss, num_images, lr = 0.0, 0, None
    for step, (crops, idx) in enumerate(tqdm(batches, desc=f"epoch {epoch} train", disable=not progress, leave=False)):
        lr = float(run.schedule[epoch * run.steps_per_epoch + step])
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            embeddings, scores = model(crops)
        loss = dcv2_loss(scores, [t[idx].repeat(num_crops).to(device) for t in targets], args.temperature)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss is {loss.item()} at epoch {epoch} step {step}: lower --base-lr; the last checkpoint is kept"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        views = embeddings.detach().float().reshape(num_crops, len(idx), -1)[args.crops_for_assign]
        run.bank.write(idx, views)
        kill_point("mid-step")
        total_loss += loss.item() * len(idx)
        num_images += len(idx)
    return {"loss": total_loss / max(1, num_images), "images": num_images, "lr": lr}


def dcv2_loss(scores: list[torch.Tensor], targets: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over heads of the cross-entropy of scores / temperature against the targets; rows whose target is
    IGNORE (an image the clustering did not see) are left out; a head with no target left adds zero."""
    losses = []
    for head_scores, head_targets in zip(scores, targets, strict=True):
        if (head_targets != IGNORE).any():
            losses.append(F.cross_entropy(head_scores.float() / temperature, head_targets, ignore_index=IGNORE))
        else:
            losses.append(head_scores.sum() * 0.0)
    return torch.stack(losses).mean()


def cluster_metrics(results: list, previous: np.ndarray | None, targets: np.ndarray) -> dict:
    """Head 0: NMI against the previous epoch and the labels, cluster sizes; every head: empty clusters."""
    assignments = results[0].assignments.numpy()
    assigned = assignments >= 0
    sizes = results[0].counts.numpy()
    nonempty = sizes[sizes > 0]
    nmi_prev = None
    if previous is not None:
        both = assigned & (previous >= 0)
        nmi_prev = nmi(assignments[both], previous[both])
    has_labels = len(np.unique(targets)) > 1
    return {
        "nmi_prev": nmi_prev,
        "nmi_labels": nmi(assignments[assigned], targets[assigned]) if has_labels else None,
        "clustered_images": int(assigned.sum()),
        "num_clusters": int(len(nonempty)),
        "empty_clusters": int((sizes == 0).sum()),
        "empty_clusters_all_heads": int(sum((r.counts == 0).sum() for r in results)),
        "cluster_size_min": int(nonempty.min()),
        "cluster_size_median": float(np.median(nonempty)),
        "cluster_size_max": int(nonempty.max()),
    }


def checkpoint_state(
    args: argparse.Namespace, model: nn.Module, optimizer: LARS, bank: MemoryBank, state: RunState
) -> dict:
    """`backbone`, `arch` and `sobel` as main_deepcluster.py writes them: every evaluation reads the backbone."""
    net = unwrap(model)
    return {
        "method": "deepcluster-v2",
        "departures": protocol_notes(DEPARTURES),  # from SwAV's script, beside the weights they produced
        "epoch": state.epoch,
        "arch": args.arch,
        "sobel": args.sobel,
        "args": vars(args),
        "backbone": net.backbone.state_dict(),
        "head": net.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "bank": bank.state_dict(),
        "assignments": state.assignments.astype(np.int32),
        "knn_floor": state.knn_floor,
        "rng": rng_states(),
        "wandb_run_id": state.wandb_run_id,
        "wandb_group": state.wandb_group,
        "provenance": provenance(),
    }


def unwrap(module: nn.Module) -> MultiCropNet:
    return module.module if isinstance(module, DistributedDataParallel) else module


def restore(
    args: argparse.Namespace, output_dir: Path, model: nn.Module, optimizer: LARS, bank: MemoryBank
) -> RunState:
    """Resume from --resume or OUTPUT_DIR/checkpoint.pth, strictly; else a fresh state."""
    state = RunState()
    path = Path(args.resume) if args.resume else checkpoint_path(output_dir)
    if not args.resume and not path.is_file():
        return state
    ckpt = load_checkpoint(path)
    if ckpt.get("method") != "deepcluster-v2":
        raise UserError(f"checkpoint {path} is not a main_deepclusterv2.py checkpoint: use a new --output-dir")
    check_same_run(ckpt.get("args", {}), args, RUN_DEFINING_ARGS, path)
    net = unwrap(model)
    load_state_strict(net.backbone, ckpt["backbone"], f"checkpoint {path}")
    load_state_strict(net.head, ckpt["head"], f"checkpoint {path}")
    optimizer.load_state_dict(ckpt["optimizer"])
    bank.load_state_dict(ckpt["bank"])
    state.epoch = ckpt["epoch"]
    state.assignments = ckpt["assignments"].astype(np.int64)
    state.knn_floor = ckpt.get("knn_floor")
    state.wandb_run_id = ckpt.get("wandb_run_id")
    state.wandb_group = ckpt.get("wandb_group")
    set_rng_states(ckpt["rng"])
    if dist_util.current().is_main:
        JsonLog(output_dir / "log.jsonl").truncate_after(state.epoch - 1)
    logger.info("resumed from %s at epoch %d", path, state.epoch)
    return state


if __name__ == "__main__":
    script_entry("DeepCluster-v2 pretraining", get_args_parser, main, DEPARTURES)
