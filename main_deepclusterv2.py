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
from util.data import DataProfile, profile_data
from util.errors import UserError
from util.faults import kill_point
from util.logging import interactive
from util.metrics import nmi
from util.precision import add_amp_arg, add_compile_arg, autocast, check_amp, compile_in_place, to_channels_last
from util.pretrain.alarms import size_entropy
from util.pretrain.bank import MemoryBank
from util.pretrain.epoch_log import PhaseTimer, close_record
from util.pretrain.features import Extraction, extract_features
from util.pretrain.lars import LARS
from util.pretrain.monitor import (
    add_monitor_args,
    floors_of,
    resolve_knn_every,
)
from util.pretrain.outputs import add_output_args
from util.pretrain.probe import OnlineProbe, wants_probe
from util.pretrain.recipe import SMALL_ARCH, apply_rule_v2
from util.pretrain.run import EpochContext, Method, RunState, open_run, resume, unwrap
from util.pretrain.schedule import warmup_cosine
from util.pretrain.spherical import IGNORE, SphericalResult, spherical_kmeans
from util.pretrain.step_log import StepLog
from util.runtime import script_entry
from util.seeds import derive_seed

logger = logging.getLogger("deepcluster")

DEPARTURES = f"""departures from SwAV's main_deepclusterv2.py (Caron et al. 2020), named so results read right:
  memory bank   kept in dataset-index order and the same on every process (each step's embeddings are gathered),
                not one bank per process: a checkpoint resumes on any number of processes. As SwAV's, the next
                clustering sees only the images written during the previous epoch.
  k-means       each process scores its share of the bank; sums are exact fixed-point integers, so the clustering
                is the same whatever the number of processes (SwAV: float sums, rank-dependent rounding). The
                initial centroids are bank rows drawn from --seed (SwAV: drawn on rank 0 and broadcast).
  --in-memory   small images are decoded once to uint8 and augmented in batches on the device: bilinear crops without
                antialiasing, colour jitter in a fixed order (torchvision: random order), blur with 13 taps.
  small images  (at most 64 px: cifar10, sklearn-digits, folders of small images) two crops at the images' size
                (scale 0.08-1), no blur, batch 256, 3 x 3000 prototypes, LARS lr 0.6 x batch/256, final lr base/1000:
                solo-learn's CIFAR recipe, not SwAV's (ImageNet only), except: the network, {SMALL_ARCH} (v1's for
                these images; solo-learn: ResNet-18 with the CIFAR stem, --arch resnet18_cifar); SwAV's LARS options,
                trust 0.001, every tensor adapted, no clipping (solo-learn: trust 0.02, clipped, biases and BatchNorm
                excluded, which fell below the random network on a CPU budget); no blur (solo-learn: p=0.5; --blur);
                200 epochs with 10 of warmup (solo-learn: 1000 and 11); ImageNet's mean/std to normalise (solo-learn:
                CIFAR-10's). Below 10,000 images: batch 64 and at most one prototype per 10 images; on sklearn-digits
                no flips and crops of 0.4-1 of the area (a mirrored or cut-off digit is another digit).
  --base-lr     default 0.3 x effective batch / 256 on ImageNet (SwAV's 4.8 at 4096, scaled linearly; warmup from
                1/16 of it, SwAV's 0.3 for 4.8).
  --amp         bf16 autocast for the backbone and the projection's hidden layer; the last projection layer, the
                normalisation and the prototype scores stay float32 (SwAV: no mixed precision; solo-learn: fp16).
  --sync-bn     SyncBatchNorm across all processes (SwAV's scripts: groups of 8 GPUs).
  blur          13 taps (SwAV: cv2 with 23 taps at 224 px), sigma 0.1-2 px as SwAV.
  --warmup-epochs  default min(10, epochs / 10): SwAV's 10 of 800, shortened for short runs.
  --knn-every   not in the paper: a weighted kNN monitor (k=20, T=0.07) of the backbone's pooled features on a
                labelled held-out split beside its floor (the higher of the random network's and the pixels', as
                main_deepcluster.py's); never used for training."""

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
    "flip",
    "nmb_prototypes",
    "temperature",
    "kmeans_iters",
    "labels_from",
    "feat_dim",
    "hidden_mlp",
    "epochs",
)
METHOD = Method("deepcluster-v2", RUN_DEFINING_ARGS, DEPARTURES, "its schedule ends there: use a new --output-dir")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster-v2 pretraining", add_help=False)
    add_model_args(parser, None, f"{SMALL_ARCH} for images of at most 64 px, else resnet50")
    add_data_args(parser)
    add_multicrop_args(parser)
    add_dcv2_args(parser)
    add_optimisation_args(parser)
    group = add_monitor_args(parser)
    group.add_argument(
        "--extract-batch-size",
        type=positive_int,
        default=None,
        help="images per forward of the monitor (default: 2x --batch-size)",
    )
    add_runtime_args(parser)
    add_output_args(parser)
    add_wandb_args(parser, pretraining=True)
    return parser


def add_multicrop_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-crop (SwAV's flags)")
    group.add_argument(
        "--nmb-crops",
        type=positive_int,
        nargs="+",
        default=None,
        help="crops per resolution (ImageNet: 2 6; images of at most 64 px: 2)",
    )
    group.add_argument(
        "--size-crops",
        type=positive_int,
        nargs="+",
        default=None,
        help="crop sizes in px (ImageNet: 224 96, i.e. --image-size and 96/224 of it; small images: their size)",
    )
    group.add_argument(
        "--min-scale-crops",
        type=float,
        nargs="+",
        default=None,
        help="smallest crop areas (ImageNet: 0.14 0.05; small images: 0.08, digits 0.4)",
    )
    group.add_argument(
        "--max-scale-crops",
        type=float,
        nargs="+",
        default=None,
        help="largest crop areas (ImageNet: 1 0.14; small images: 1)",
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
        help="Gaussian blur p=0.5, sigma 0.1-2 px (default: on for folders, as SwAV on ImageNet; off for images of at "
        "most 64 px, as the CIFAR-10 recipe)",
    )
    group.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips of every crop (SwAV; default: on, off for sklearn-digits)",
    )


def add_dcv2_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DeepCluster-v2")
    group.add_argument("--feat-dim", type=positive_int, default=128, help="embedding dimension (SwAV: 128)")
    group.add_argument("--hidden-mlp", type=positive_int, default=2048, help="projection hidden units (SwAV: 2048)")
    group.add_argument(
        "--nmb-prototypes",
        type=positive_int,
        nargs="+",
        default=None,
        help="clusters of each prototype head (SwAV: 3000 3000 3000; default: that, with at most one prototype per 10 "
        "training images)",
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


def add_optimisation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--epochs", type=positive_int, default=None, help="total epochs (ImageNet: 800; small images: 200)"
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per step per process (ImageNet: 64; small images: 256, 64 below 10,000 images)",
    )
    group.add_argument(
        "--base-lr",
        type=float,
        default=None,
        help="LARS learning rate after warmup (default: 0.3 x effective batch / 256 on ImageNet, SwAV's 4.8 at 4096; "
        "0.6 x effective batch / 256 on small images)",
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
        help="learning rate at the first step (ImageNet: base / 16, SwAV's 0.3 for 4.8; small images: 0)",
    )
    group.add_argument("--wd", type=float, default=1e-6, help="weight decay (SwAV: 1e-6)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (SwAV: 0.9)")
    group.add_argument(
        "--trust", type=float, default=0.001, help="LARS trust coefficient (SwAV's; solo-learn's CIFAR recipe: 0.02)"
    )
    group.add_argument(
        "--lars-clip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="cap each tensor's LARS rate at the learning rate (SwAV: off; solo-learn's CIFAR recipe: on)",
    )
    group.add_argument(
        "--lars-exclude-1d",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="plain SGD without weight decay for biases and BatchNorm (SwAV: off; solo-learn's CIFAR recipe: on)",
    )
    add_amp_arg(group)
    add_compile_arg(group)
    group.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SyncBatchNorm across GPUs (default: on with several CUDA processes, as SwAV)",
    )


def finalize_args(args: argparse.Namespace, world_size: int, device_type: str = "cpu") -> argparse.Namespace:
    """Fill the flags not given from the recipe for the data (util/pretrain/recipe.py, apply_rule_v2), then reject
    impossible combinations."""
    check_amp(args.amp, device_type)
    profile = profile_data(args.data, "train", args.subset, Path(args.data_cache))
    apply_rule_v2(args, profile, world_size)
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
    if args.sync_bn is None:
        args.sync_bn = world_size > 1 and device_type == "cuda"
    if args.sync_bn and device_type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation): drop --sync-bn")
    resolve_knn_every(args)
    check_bank(args, profile, world_size)
    return args


def check_bank(args: argparse.Namespace, profile: DataProfile, world_size: int) -> None:
    """Refuse a batch larger than the data, a bank holding fewer images than a head has prototypes, and true labels
    with fewer prototypes than classes."""
    num = profile.num_images
    if -(-num // world_size) // args.batch_size == 0:
        raise UserError(
            f"--batch-size {args.batch_size} x {world_size} process(es) is larger than the {num} images: "
            "lower --batch-size"
        )
    seen = min(num, -(-num // world_size) // args.batch_size * args.batch_size * world_size)  # bank rows an epoch
    if seen < max(args.nmb_prototypes):
        raise UserError(
            f"the memory bank holds {seen} images per epoch, fewer than --nmb-prototypes "
            f"{max(args.nmb_prototypes)}: lower --nmb-prototypes (or use more images)"
        )
    if args.labels_from == "dataset" and profile.num_classes > min(args.nmb_prototypes):
        raise UserError(f"--labels-from dataset needs --nmb-prototypes >= the {profile.num_classes} classes")


@dataclass(kw_only=True)
class Run(EpochContext):
    """What every DeepCluster-v2 epoch reads and updates beside the shared context."""

    model: MultiCropNet
    optimizer: LARS
    bank: MemoryBank
    specs: list[AugmentSpec]  # one per crop
    schedule: np.ndarray  # the learning rate of every step
    steps_per_epoch: int
    probe: OnlineProbe | None = None  # the online linear probe (with the kNN monitor)


def main(args: argparse.Namespace) -> None:
    # ---- set-up: processes, device, seeds, output folder; the flags the data decides; the images and the monitor
    run = open_run(args, finalize_args, lambda args: augment_preset("paper", args.image_size))  # (training: specs)
    args, device, info = run.args, run.device, run.info
    specs = multicrop_specs(
        args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops, args.blur, args.flip
    )
    steps_per_epoch = -(-len(run.source) // info.world_size) // args.batch_size

    # ---- model, optimizer, memory bank (the embeddings of every image's assignment crops)
    model, optimizer = build_model_and_optimizer(args, device, info)
    bank = MemoryBank(len(args.crops_for_assign), len(run.source), args.feat_dim, device)
    classes = len(run.source.images.classes)
    probe = OnlineProbe(model.backbone.feature_dim, classes, device) if wants_probe(args) else None
    saved = {"backbone": model.backbone, "head": model.head, "optimizer": optimizer, "bank": bank}
    saved["online_probe"] = probe

    # ---- resume from OUTPUT_DIR/checkpoint.pth (or --resume), every object strictly; the W&B run
    resumed = resume(run, METHOD, saved)
    if resumed is None:
        return
    state, outputs = resumed
    schedule = warmup_cosine(
        args.base_lr, args.final_lr, args.epochs, steps_per_epoch, args.warmup_epochs, args.start_warmup
    )
    effective, crops = args.batch_size * info.world_size, sum(args.nmb_crops)
    logger.info(
        "effective batch %d (%d x %d processes), %d steps an epoch, %d crops, heads %s, device %s",
        *(effective, args.batch_size, info.world_size, steps_per_epoch, crops, args.nmb_prototypes, device),
    )
    parts = {"model": model, "optimizer": optimizer, "bank": bank, "specs": specs, "schedule": schedule}
    run = Run(**vars(run), **parts, steps_per_epoch=steps_per_epoch, probe=probe)

    # ---- epochs: (fill the bank) -> cluster the bank -> train -> log -> checkpoint. The last pass measures the final
    # network (monitor and clustering) without training
    for epoch in range(state.epoch, args.epochs + 1):
        trains = epoch < args.epochs
        record, assignments = run_epoch(run, epoch, state, trains)
        outputs.close_epoch(record, assignments, state, trains)
    outputs.finish()  # the run's answer: the final network against its floors, where to look next
    dist_util.cleanup()


def build_model_and_optimizer(
    args: argparse.Namespace, device: torch.device, info: dist_util.DistInfo
) -> tuple[MultiCropNet, LARS]:
    """backbone -> projection -> prototype heads (SyncBatchNorm across processes when asked), and LARS over every
    trained parameter: the prototypes are set by k-means, never trained."""
    backbone = build_model(args.arch, args.sobel)
    for size in sorted({args.image_size, *args.size_crops}):
        check_image_size(backbone, args.arch, size)
    head = ProjectionPrototypes(backbone.feature_dim, args.hidden_mlp, args.feat_dim, args.nmb_prototypes)
    model = to_channels_last(MultiCropNet(backbone, head).to(device), args.channels_last)
    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    compile_in_place(model.backbone, args.compile)
    return model, lars_from_args(model, args)


def lars_from_args(model: nn.Module, args: argparse.Namespace) -> LARS:
    """LARS over every trained parameter of `model`, with the run's --base-lr, --momentum, --wd, --trust,
    --lars-clip and --lars-exclude-1d."""
    trained = [p for p in model.parameters() if p.requires_grad]
    return LARS(
        trained,
        lr=args.base_lr,
        momentum=args.momentum,
        weight_decay=args.wd,
        trust=args.trust,
        clip=args.lars_clip,
        exclude_1d=args.lars_exclude_1d,
    )


def run_epoch(run: Run, epoch: int, state: RunState, train: bool = True) -> tuple[dict, np.ndarray]:
    """One DeepCluster-v2 epoch; returns its record for log.jsonl and head 0's assignments. Its kNN is of the
    network after `epoch` epochs; train=False measures the final network and its clustering without training."""
    args, progress, times = run.args, interactive() and run.info.is_main, PhaseTimer()
    knn, model = {}, unwrap(run.model)
    with times("monitor"):
        if run.monitor is not None and run.monitor.spec.due(epoch, final=not train):
            model.eval()
            dist_util.broadcast_buffers(model)  # every rank measures with rank 0's BatchNorm statistics
            probe, keep_points = run.probe if epoch > 0 else None, run.monitor.spec.keep_points  # probe: untrained
            knn = measure(run, model.backbone, epoch, progress, probe, keep_points)
    with times("floor"):  # once per run: the random network (BatchNorm initial and recomputed), the pixels
        if epoch == 0 and knn:
            knn.update(run.monitor.floor(model.backbone, knn, lambda net: measure(run, net, epoch, progress)))
            state.floors = floors_of(knn)
    model.train()
    with times("fill"):  # once per run: the bank's first embeddings, before the first clustering
        if epoch == 0 and not run.bank.fresh.any():
            fill_bank(run, progress)
    with times("cluster"):  # per head: spherical k-means of the bank
        run.bank.rotate()
        results = cluster_bank(run, epoch)
    stats = {"loss": None, "images": 0, "lr": None}
    with times("train"):
        if train:
            repeated = times.total - times["time_floor"] - times["time_fill"]  # what every epoch spends before training
            stats = train_one_epoch(run, epoch, [r.assignments for r in results], before_training=repeated)
    record = {"epoch": epoch, "loss": stats["loss"], "lr": stats["lr"]}
    record.update(cluster_metrics(results, state.assignments, run.source.targets), **knn)
    assignments = results[0].assignments.numpy()  # head 0's, for NMI and the saved clusters
    return close_record(record, times, stats, state.floors, run.info.world_size, args.epochs), assignments


def measure(
    run: Run, net: nn.Module, epoch: int, progress: bool, probe: OnlineProbe | None = None, keep_points: bool = False
) -> dict:
    """The kNN monitor's record of `net` (in eval mode): the backbone's pooled features of the training images in the
    deterministic view vote for the held-out split (this pass is the script's; the monitor listens); its held-out
    k-means runs on the projection head's L2-normalised embeddings, what the memory bank clusters. Every rank
    streams its share of the training images."""
    args, head = run.args, unwrap(run.model).head

    def embed(feats: torch.Tensor) -> torch.Tensor:  # (M, D) pooled features -> (M, feat_dim) bank embeddings
        with torch.inference_mode():
            return head(feats.to(run.device))[0].cpu()

    votes = run.monitor.listen(net)
    how = Extraction(args.extract_batch_size, run.device, args.amp, progress, f"epoch {epoch} monitor")
    extract_features(net, run.source, how, on_raw_batch=votes.update)
    return run.monitor.measure(votes, epoch, embed, probe, keep_points)


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
    usable = usable.cpu()
    assignments = torch.where(usable, labels, torch.full_like(labels, IGNORE))
    sums = torch.zeros(k, points.shape[1], dtype=torch.float64, device=points.device)
    sums.index_add_(0, labels[usable].to(points.device), points[usable.to(points.device)].double())
    counts = torch.bincount(labels[usable], minlength=k)
    centroids = F.normalize(sums, dim=1).float()
    return SphericalResult(centroids, assignments, counts)


def train_one_epoch(run: Run, epoch: int, targets: list[torch.Tensor], before_training: float) -> dict:
    """Multi-crop steps over a fresh permutation of the images; each step writes its embeddings into the bank.
    before_training: the epoch's seconds so far, for the run's time estimate."""
    args, info, device = run.args, run.info, run.device
    progress = interactive() and info.is_main
    order = torch.randperm(
        len(run.source), generator=torch.Generator().manual_seed(derive_seed(args.seed, "v2-order", epoch))
    )
    mine = dist_util.shard(order.numpy(), info, wrap=True)[: run.steps_per_epoch * args.batch_size]
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "pretrain-batches", epoch))
    batches = run.source.multicrop_batches(mine, run.specs, args.batch_size, device, gen, info.rank, info.world_size)
    batches = run.clock.watch(batches, run.steps_per_epoch, before_training, args.batch_size * info.world_size)
    model: nn.Module = run.model
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    num_crops = len(run.specs)
    log = StepLog(args.log_every, epoch, run.steps_per_epoch, device, "lower --base-lr", info.is_main, run.clock)
    targets = [t.to(device) for t in targets]  # per head (N,) assignments, on the device for the whole epoch
    assign = torch.tensor(args.crops_for_assign, device=device)  # the crops the bank keeps, as a device index
    true_labels = torch.from_numpy(run.source.targets).to(device) if run.probe is not None else None
    lr = None
    for step, (crops, idx) in enumerate(tqdm(batches, desc=f"epoch {epoch} train", disable=not progress, leave=False)):
        lr = float(run.schedule[epoch * run.steps_per_epoch + step])
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, args.amp):
            embeddings, scores = model(crops)  # (crops x B, dim) L2-normalised; per head (crops x B, k_h) cosines
        # every crop of an image has that image's assignment from the last clustering: (crops x B,) per head
        on_device = idx.to(device, non_blocking=True)
        loss = dcv2_loss(scores, [t[on_device].repeat(num_crops) for t in targets], args.temperature)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        views = embeddings.detach().float().reshape(num_crops, len(idx), -1).index_select(0, assign)  # (views, B, dim)
        run.bank.write(on_device, views)
        if run.probe is not None:  # the first resolution's crops' detached features, the images' true labels
            features = unwrap(model).features
            run.probe.step(features, true_labels[on_device].repeat(len(features) // len(idx)))
        kill_point("mid-step")
        log.add(step, loss, len(idx))
    return {**log.finish(), "lr": lr}


def dcv2_loss(scores: list[torch.Tensor], targets: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over heads of the cross-entropy of scores / temperature against the targets; rows whose target is
    IGNORE (an image the clustering did not see) are left out; a head with no target left adds zero. No value is
    read on the host: the mean over a head's kept rows is its summed loss over max(1, their count)."""
    losses = []
    for head_scores, head_targets in zip(scores, targets, strict=True):  # (crops x B, k_h) scores, (crops x B,)
        # scores are cosines to the head's frozen prototypes (SwAV appendix: DeepCluster-v2, temperature 0.1)
        summed = F.cross_entropy(head_scores.float() / temperature, head_targets, ignore_index=IGNORE, reduction="sum")
        losses.append(summed / (head_targets != IGNORE).sum().clamp(min=1))
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
        "cluster_size_entropy": size_entropy(sizes),
    }


if __name__ == "__main__":
    script_entry("DeepCluster-v2 pretraining", get_args_parser, main, DEPARTURES)
