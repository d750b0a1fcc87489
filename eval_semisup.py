"""Semi-supervised evaluation: fine-tune the whole backbone plus a linear head on a labelled subset.

    .venv/bin/python eval_semisup.py --pretrained runs/x/checkpoint.pth --data cifar10 --percent 10 \
        --output-dir runs/x/semisup-10pct
    .venv/bin/python eval_semisup.py --pretrained CKPT --data /datasets/imagenet --subset-file 1percent.txt \
        --output-dir runs/x/semisup-1pct

The labelled subset is either --percent P (P % of every class, drawn deterministically with --subset-seed; the list
is saved as OUTPUT_DIR/subset.txt) or --subset-file (the published 1 % / 10 % ImageNet lists: one image per line,
`class/file.JPEG` as mmselfsup's lists or the bare file name as SimCLR's). The trivial baselines are scored beside
it (--baseline): the random-init network of the same arch, fine-tuned the same way from BatchNorm's initial
statistics and from statistics recomputed on the labelled images, and the pixels (a weighted kNN of the evaluation
images against the labelled ones on their flattened pixels, for images of at most 64 px). Results:
OUTPUT_DIR/results.json, the console, a W&B table, each top-1 / top-5 with its bootstrap 95 % interval over the
evaluation images and the paired gains over the random network (the higher of its two) and over the pixels
(util/eval/bootstrap.py); OUTPUT_DIR/semisup_state.pth resumes an interrupted run and is keyed by the weights' sha256
and every protocol flag.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models import Backbone
from util import dist as dist_util
from util.args import (
    add_baseline_arg,
    add_data_args,
    add_evaluated_model_args,
    add_runtime_args,
    add_wandb_args,
    positive_int,
)
from util.augment import augment_preset
from util.checkpoint import atomic_write, save_checkpoint
from util.data import (
    ImageSource,
    build_source,
    evaluation_split,
    list_images,
    make_source,
    resolve_data_defaults,
    resolve_split,
)
from util.datasets import default_cache_dir
from util.errors import UserError
from util.eval.bootstrap import add_intervals, hit_statistics, warn_without_interval
from util.eval.pretrained import (
    NETWORK_PREFIXES,
    Checkpoint,
    evaluated_network,
    measurable_networks,
    network_identities,
    networks_to_evaluate,
    resolve_pretrained,
)
from util.eval.results import ResultsTable, gain_row, network_rows, publish
from util.eval.semisup import PRESETS, percent_subset, preset_regime, read_subset_file, subset_listing
from util.eval.state import EvalState, plan_id
from util.knn import KNN_K, KNN_TEMPERATURE
from util.logging import protocol_notes, provenance
from util.metrics import hit_rate, topk_hits
from util.pixels import PIXEL_VIEWS, pixel_knn_scores
from util.runtime import script_entry, start_run
from util.seeds import derive_seed
from util.tracking import Tracker, WandbSpec, init_tracker

logger = logging.getLogger("deepcluster")

STATE_NAME = "semisup_state.pth"
DEPARTURES = """protocol notes (mmselfsup's ImageNet 1 % / 10 % semi-supervised benchmark; SwAV's eval_semisup), and
where this script departs from them:
  mmselfsup  (default preset) SGD momentum 0.9, batch 256, 20 epochs, lr x0.2 at epochs 12 and 16, lr 0.1 and head
             lr multiplier 1 (its base config; the benchmark sweeps lr {0.001, 0.01, 0.1} x head {1, 10, 100}: run
             that grid with slurm/submit.py --sweep lr=... --sweep head_lr_mult=... and pick with sweep_best.py),
             weight decay 5e-4 (1 %) / 1e-4 (10 %); the LAST epoch is reported.
  swav       --preset swav: weight decay 0, trunk / head lr 0.02 / 5 (1 %), 0.01 / 0.2 (10 %), same steps; the BEST
             epoch is reported (as SwAV's script does; this selects on the validation set).
  views      training: RandomResizedCrop + flip; evaluation: resize (8/7 of the crop: 256 for 224) + center crop. In
             memory (cifar10), the batched augmentation: bilinear crops.
  BatchNorm  the backbone's BatchNorm trains in batch mode; on several GPUs it is SyncBatchNorm (mmselfsup's configs
             use SyncBN); several CPU processes (gloo) each normalise their own shard, so there the number of
             processes changes the numbers (it is not part of the state key); rank 0's running statistics are
             used for evaluation.
  baselines  (not in the protocol) --baseline all: the random-init network fine-tuned twice, from BatchNorm's initial
             statistics (random_init_*) and from statistics recomputed on the labelled images (one no-grad pass,
             random_init_recomputed_bn_*): fine-tuning trains BatchNorm in batch mode, so the two runs take the same
             steps and differ only in the running statistics, by the initial ones' share 0.9^steps (large after a
             few steps on a 1 % subset); the gain is over the higher. The pixels (pixels_*): the weighted kNN
             (k=20, T=0.07) of the evaluation images against the labelled images on their flattened pixels, two
             views (the network's input, each image centred on its own mean), the higher reported.
  subsets    --percent draws its own per-class subset (not the published ImageNet lists, which --subset-file reads).
  state      OUTPUT_DIR/semisup_state.pth keeps each task (network) under the sha256 of the weights and every
             protocol flag: a task resumes or is reused only when both match; results.json and every table row name
             the weights (path, sha256) that produced them."""

# Flags that change a task's numbers: a task is resumed or reused only when all of them and the weights match.
# The labelled images enter by name (the subset listing), however they were chosen (--percent or --subset-file).
PROTOCOL_FLAGS = ("arch", "sobel", "data", "image_size", "in_memory", "batch_size", "momentum", "seed", "preset")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster semi-supervised evaluation", add_help=False)
    add_evaluated_model_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("protocol")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--percent", type=float, default=None, help="P %% of every class, drawn with --subset-seed")
    which.add_argument("--subset-file", default=None, help="a published subset list (see above)")
    group.add_argument("--subset-seed", type=int, default=0, help="the draw of --percent (default: %(default)s)")
    group.add_argument("--preset", choices=sorted(PRESETS), default="mmselfsup", help="default: %(default)s")
    group.add_argument("--epochs", type=positive_int, default=None, help="override the preset's 20 (steps rescale)")
    group.add_argument("--lr", type=float, default=None, help="trunk lr (override the preset)")
    group.add_argument("--head-lr-mult", type=float, default=None, help="head lr = lr x this (override the preset)")
    group.add_argument("--wd", type=float, default=None, help="weight decay (override the preset)")
    group.add_argument("--batch-size", type=positive_int, default=256, help="global batch (protocol: 256)")
    group.add_argument("--momentum", type=float, default=0.9)
    add_baseline_arg(group)
    add_runtime_args(parser, kind="evaluation")
    add_wandb_args(parser)
    return parser


@dataclass(frozen=True)
class FineTuneSchedule:
    """The fine-tuning's optimisation: SGD for `epochs`, the rate x gamma at each milestone (fractions of the epochs),
    the head's rate lr x head_lr_mult, and which epoch is reported (`last` or `best`)."""

    epochs: int
    milestones: tuple[float, ...]
    gamma: float
    lr: float
    head_lr_mult: float
    wd: float
    pick: str


def hyperparameters(args: argparse.Namespace, percent: float) -> FineTuneSchedule:
    """The preset's values for this labelled fraction, with the command-line overrides."""
    preset, regime = PRESETS[args.preset], preset_regime(percent)
    hp = FineTuneSchedule(
        epochs=preset["epochs"],
        milestones=preset["milestones"],
        gamma=preset["gamma"],
        lr=preset["lr"][regime],
        head_lr_mult=preset["head_lr_mult"][regime],
        wd=preset["wd"][regime],
        pick=preset["pick"],
    )
    return replace(
        hp, **{k: getattr(args, k) for k in ("epochs", "lr", "head_lr_mult", "wd") if getattr(args, k) is not None}
    )


def task_key(args: argparse.Namespace, hp: FineTuneSchedule, weights_hash: str, listing: str) -> str:
    flags = {name: getattr(args, name) for name in PROTOCOL_FLAGS}
    flags["subset_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
    text = json.dumps({"weights_sha256": weights_hash, **flags, **asdict(hp)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class FineTuned(nn.Module):
    """backbone -> its head activation -> a linear classifier; every parameter trains."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.head_activation(self.backbone(x)))


def labelled_subset(args: argparse.Namespace, images) -> np.ndarray:
    if args.subset_file:
        return read_subset_file(images, Path(args.subset_file))
    return percent_subset(images, args.percent, args.subset_seed)


@dataclass
class LabelledData:
    """The labelled training subset (its listing keys the results), the evaluation split, and their sizes."""

    train: ImageSource
    val: ImageSource
    listing: str  # the labelled images by name, one per line
    labelled: int
    percent: float


def labelled_data(args: argparse.Namespace, info: dist_util.DistInfo, output_dir: Path) -> LabelledData:
    """The labelled subset (--percent or --subset-file; written to OUTPUT_DIR/subset.txt once every check passed)
    and the val (or test) split, both with the fine-tuning's crop + flip view for training."""
    if args.subset is not None:
        raise UserError("--subset does not apply here: choose the labelled images with --percent or --subset-file")
    cache = Path(args.data_cache or default_cache_dir())
    images = list_images(resolve_split(args.data, "train", cache))
    chosen = labelled_subset(args, images)
    percent = args.percent if args.percent is not None else 100 * len(chosen) / len(images)
    val_split = evaluation_split(args.data)
    val_images = list_images(resolve_split(args.data, val_split, cache))
    if val_images.classes != images.classes:
        raise UserError(f"train and {val_split} class folders differ: fix --data")
    if args.batch_size % info.world_size:
        raise UserError(f"--batch-size {args.batch_size} (global) must divide by the {info.world_size} processes")
    if len(chosen) < args.batch_size:
        raise UserError(
            f"the labelled subset has {len(chosen)} images, fewer than --batch-size {args.batch_size}: "
            "lower --batch-size or label more images"
        )
    spec = augment_preset("paper", args.image_size)  # RandomResizedCrop + flip
    train = make_source(images.subset(chosen), args.image_size, spec, args.in_memory, args.workers)
    val = build_source(args.data, val_split, args.image_size, spec, None, args.in_memory, args.workers, cache)
    listing = subset_listing(images, chosen)
    if info.is_main:
        atomic_write(output_dir / "subset.txt", lambda handle: handle.write(listing.encode()))
    return LabelledData(train, val, listing, len(chosen), percent)


def main(args: argparse.Namespace) -> None:
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir, args.dist_timeout)
    checkpoint, lineage = resolve_pretrained(args)
    resolve_data_defaults(args)

    # ---- the labelled subset (saved beside the results) and the evaluation split
    data = labelled_data(args, info, output_dir)
    hp = hyperparameters(args, data.percent)
    logger.info(
        "%d labelled images (%.2f %%), %d classes, %d evaluation images; %s preset: %s",
        data.labelled,
        data.percent,
        len(data.train.images.classes),
        len(data.val),
        args.preset,
        hp,
    )

    # ---- tasks keyed by the weights' content and every protocol flag
    networks = networks_to_evaluate(checkpoint, args.baseline)
    networks, skipped = measurable_networks(networks, data.labelled, len(data.val), args.image_size)
    identities = network_identities(networks, args.arch, args.sobel, args.seed)
    state = EvalState.load(output_dir / STATE_NAME, keyed_since=1)  # version 1 states were keyed too
    tasks = [
        Task(name, weights, task_key(args, hp, identities[name]["sha256"], data.listing)) for name, weights in networks
    ]
    plan = plan_id([task.key for task in tasks])
    config = {**vars(args), **provenance(), "identities": identities, "hyperparameters": asdict(hp)}
    tracker = init_tracker(
        WandbSpec.from_args(args),
        output_dir,
        job_type="semisup",
        config={**config, "labelled": data.labelled},
        run_id=state.wandb_runs.get(plan),
        epoch_metrics=("ft/*",),
        lineage=lineage,
    )
    state.wandb_runs[plan] = tracker.run_id

    # ---- each network fine-tuned (the pixels: their kNN) or its results reused, then the intervals over the images
    results: dict = {}
    statistics: dict = {}  # results key -> its bootstrap statistic, from the task's per-image hits
    for task in tasks:
        found = dict(run_task(args, hp, task, data, identities[task.network], state, tracker, device))
        statistics.update(hit_statistics(found.pop("per_image", None), NETWORK_PREFIXES[task.network]))
        results.update({NETWORK_PREFIXES[task.network] + k: v for k, v in found.items()})
    if info.is_main:
        warn_without_interval(results, statistics, ["top1", "top5"])
        add_intervals(results, statistics, len(data.val), args.seed)
        results.update({"pixels_not_measured": skipped} if skipped is not None else {})
        write_results(args, hp, results, identities, data.labelled, data.percent, output_dir, tracker)
    tracker.finish()
    dist_util.cleanup()


@dataclass(frozen=True)
class Task:
    """One network's evaluation: its name (NETWORK_PREFIXES), weights (a checkpoint, `random` or `pixels`) and the
    key its state and results are kept under (the weights' hash and every protocol flag)."""

    network: str
    weights: Checkpoint | str
    key: str


def run_task(args, hp: FineTuneSchedule, task: Task, data, identity: dict, state: EvalState, tracker, device) -> dict:
    """The task's results: reused from the state when its key is there, else measured and kept there."""
    if task.key in state.tasks:
        logger.info(
            "== %s: reusing results of the same weights (sha256 %s) and flags", task.network, identity["sha256"][:12]
        )
    elif task.network == "pixels":
        state.finish(task.key, task.network, identity, pixel_knn(data.train, data.val, device))
    else:
        state.finish(task.key, task.network, identity, fine_tune(args, hp, task, data, device, state, tracker))
    return state.tasks[task.key]["results"]


def pixel_knn(train: ImageSource, val: ImageSource, device: torch.device) -> dict:
    """The pixels' baseline: the weighted kNN of the evaluation images against the labelled ones on their pixels, in
    both views (util/pixels.py); the higher top-1 is reported (the first of equals), with its view."""
    logger.info("== pixels (weighted kNN on the labelled images' pixels)")
    num_classes = len(train.images.classes)
    scores = pixel_knn_scores(train, val, num_classes, KNN_K, KNN_TEMPERATURE, 256, device)
    targets = torch.from_numpy(val.targets)
    hits = {view: topk_hits(scores[view], targets, (1, 5)) for view in PIXEL_VIEWS}
    view = max(PIXEL_VIEWS, key=lambda v: hit_rate(hits[v][0]))
    hit1, hit5 = hits[view]
    logger.info(
        "pixels: top1 %s; reported: %s", ", ".join(f"{v} {hit_rate(hits[v][0]):.2f}" for v in PIXEL_VIEWS), view
    )
    per_image = {"hits": {"top1": hit1.numpy(), "top5": hit5.numpy()}}
    return {"top1": hit_rate(hit1), "top5": hit_rate(hit5), "knn_view": view, "per_image": per_image}


def fine_tune(args, hp: FineTuneSchedule, task: Task, data, device, state: EvalState, tracker) -> dict:
    """SGD with step decay on every parameter; evaluated after every epoch; resumable after any epoch."""
    network, key, train, val = task.network, task.key, data.train, data.val
    logger.info("== %s", network)
    torch.manual_seed(args.seed)  # the head's init (and the random-init baseline) are reproducible
    backbone = evaluated_network(network, task.weights, args.arch, args.sobel, device, train, args.channels_last)
    for param in backbone.parameters():
        param.requires_grad_(True)
    model = FineTuned(backbone, len(train.images.classes)).to(device)
    info = dist_util.current()
    trained: nn.Module = model
    if info.distributed:
        if device.type == "cuda":
            model = trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    groups = [
        {"params": list(model.backbone.parameters()), "lr": hp.lr},
        {"params": list(model.head.parameters()), "lr": hp.lr * hp.head_lr_mult},
    ]
    optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=args.momentum, weight_decay=hp.wd)
    milestones = [max(1, round(f * hp.epochs)) for f in hp.milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=hp.gamma)
    history: list[dict] = []
    kept: dict = {}  # per-image hits of the epochs that can be reported (hp.pick: the last, or every one for the best)
    start = 0
    if current := state.resumable(key):
        model.load_state_dict(current["model"])
        optimizer.load_state_dict(current["optimizer"])
        scheduler.load_state_dict(current["scheduler"])
        history, start, kept = current["history"], current["epoch"], current.get("hits", {})
        logger.info("resumed %s at epoch %d", network, start)
    for epoch in range(start, hp.epochs):
        loss = fine_tune_epoch(args, epoch, trained, train, optimizer, device)
        scheduler.step()
        dist_util.broadcast_buffers(model)  # every rank scores with rank 0's BatchNorm statistics, the saved ones
        (top1, top5), hits = top1_top5(model, val, device)
        for name, hit in hits.items():  # the best epoch is picked again on every bootstrap resample
            kept[name] = [hit] if hp.pick == "last" else [*kept.get(name, []), hit]
        history.append({"epoch": epoch, "loss": loss, "top1": top1, "top5": top5})
        logger.info("%s epoch %d/%d loss %.4f top1 %.2f top5 %.2f", network, epoch, hp.epochs, loss, top1, top5)
        metrics = {"loss": loss, "top1": top1, "top5": top5}
        tracker.log({"ft/epoch": epoch, **{f"ft/{network}/{name}": value for name, value in metrics.items()}})
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        state.progress(key, epoch=epoch + 1, history=history, hits=kept, **saved)
    chosen = history[-1] if hp.pick == "last" else max(history, key=lambda h: h["top1"])  # the first of equals
    final = state.path.parent / f"finetuned_{network}_{key[:12]}.pth"  # the last epoch's network
    if info.is_main:
        network = {"model": model.state_dict(), "arch": args.arch, "sobel": args.sobel, "history": history}
        save_checkpoint(network, final)
    found = {"top1": chosen["top1"], "top5": chosen["top5"], "reported_epoch": chosen["epoch"]}
    per_image = (
        {"hits": {name: hits[-1] for name, hits in kept.items()}}
        if hp.pick == "last"
        else {"hits": {name: np.stack(hits) for name, hits in kept.items()}, "select": "top1"}
    )
    return {**found, "last_epoch_top1": history[-1]["top1"], "finetuned_weights": str(final), "per_image": per_image}


def fine_tune_epoch(args, epoch: int, trained: nn.Module, train, optimizer: torch.optim.Optimizer, device) -> float:
    """One pass over the labelled images in an order and with views drawn from (--seed, epoch): each rank takes its
    share of every global batch; returns the mean loss."""
    info = dist_util.current()
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "finetune-epoch", epoch))  # order and views
    torch.manual_seed(derive_seed(args.seed, "finetune-epoch", epoch))  # views drawn in this process: exact resume
    order = torch.randperm(len(train), generator=gen).numpy()
    usable = len(order) // args.batch_size * args.batch_size
    mine = order[:usable].reshape(-1, args.batch_size)[:, info.rank :: info.world_size].reshape(-1)
    batches = train.train_batches(mine, args.batch_size // info.world_size, device, gen, info.rank, info.world_size)
    return train_epoch(trained, batches, torch.from_numpy(train.targets), optimizer)


def train_epoch(model: nn.Module, batches, targets: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    model.train()
    total, count = 0.0, 0
    for images, idx in batches:
        target = targets[idx].to(images.device, non_blocking=True)
        loss = F.cross_entropy(model(images), target)
        if not all_finite(loss):  # decided together, so that no rank is left waiting in a collective
            raise UserError(f"fine-tuning loss is {loss.item()}: lower --lr or --head-lr-mult")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=dist_util.collective_device())
    if dist_util.current().distributed:
        torch.distributed.all_reduce(bad)
    return bad.item() == 0


@torch.no_grad()
def top1_top5(model: nn.Module, val, device: torch.device) -> tuple[tuple[float, float], dict]:
    """Top-1 / top-5 (%) on the whole evaluation split, each rank scoring its shard, and the per-image hits."""
    model.eval()
    (scores,) = dist_util.sharded_map(
        np.arange(len(val)),
        lambda shard: val.eval_batches(shard, 256, device),
        lambda images: [model(images).float()],
        len(val),
    )
    hit1, hit5 = topk_hits(scores, torch.from_numpy(val.targets), (1, 5))
    return (hit_rate(hit1), hit_rate(hit5)), {"top1": hit1.cpu().numpy(), "top5": hit5.cpu().numpy()}


def write_results(
    args,
    hp: FineTuneSchedule,
    results: dict,
    identities: dict,
    labelled: int,
    percent: float,
    output_dir: Path,
    tracker: Tracker,
) -> None:
    """results.json, a console table and a W&B table shaped like the semi-supervised table of mmselfsup's DeepCluster
    model-zoo page; every row names the weights (path and content hash) that produced its numbers."""
    fine_tuned = (
        f"{args.preset} {percent:g}% lr {hp.lr:g} head x{hp.head_lr_mult:g} wd {hp.wd:g} {hp.epochs}e ({hp.pick} epoch)"
    )
    columns = ["Model", "Weights", "Pretrain Config", "Fine-tuned Config", "Top-1 (%)", "Top-5 (%)"]
    config = f"{args.arch}{'+sobel' if args.sobel else ''}"
    rows = network_rows(
        results,
        identities,
        args.pretrained,
        lambda prefix: [config, fine_tuned, results.get(prefix + "top1"), results.get(prefix + "top5")],
    )
    rows += gain_row(results, ["top1", "top5"], ["paired", config, fine_tuned])
    meta = {
        "evaluation": "semisup",
        "arch": args.arch,
        "sobel": args.sobel,
        "pretrained": args.pretrained,
        "identities": identities,
        "data": args.data,
        "labelled_images": labelled,
        "labelled_percent": percent,
        "subset_file": args.subset_file or str(output_dir / "subset.txt"),
        "preset": args.preset,
        "hyperparameters": asdict(hp),
        "protocol_notes": protocol_notes(DEPARTURES),
    }
    title = f"semi-supervised top-1 on {args.data}"
    publish(
        args, output_dir, results, meta, tracker, ResultsTable("semisup_eval", title, columns, rows, ("top1", "top5"))
    )


if __name__ == "__main__":
    script_entry("DeepCluster semi-supervised evaluation", get_args_parser, main, DEPARTURES)
