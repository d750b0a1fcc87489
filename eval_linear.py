"""Linear probes on frozen features: multi-head Feature1..Feature5, AvgPool, and weighted kNN.

Every evaluation also runs the trivial baselines a pretrained network must beat (--baseline): the random-init network
of the same architecture, with BatchNorm's initial statistics and with statistics recomputed on the training images,
and the pixels (kNN and the AvgPool probe on the flattened input images, for images of at most 64 px). Results go to
OUTPUT_DIR/results.json, the console and W&B, every number with its bootstrap 95 % interval over the validation
images and the paired gains over the random network (the higher of its two) and over the pixels
(util/eval/bootstrap.py).
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
from torch.nn.parallel import DistributedDataParallel

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
from util.data import ImageSource, build_source, evaluation_split, resolve_data_defaults
from util.errors import UserError
from util.eval.bootstrap import add_intervals, hit_statistics, warn_without_interval
from util.eval.pretrained import (
    NETWORK_PREFIXES,
    Checkpoint,
    PixelNet,
    evaluated_network,
    measurable_networks,
    network_identities,
    networks_to_evaluate,
    resolve_pretrained,
)
from util.eval.probe_features import CachedFeatures, LiveFeatures
from util.eval.probes import TAP_NAMES, AvgPoolHead, MultiHead, NoTaps, build_tap_pooling
from util.eval.results import ResultsTable, gain_row, network_rows, publish
from util.eval.state import EvalState, plan_id
from util.knn import KNN_K, KNN_TEMPERATURE, knn_predict, l2_normalize
from util.logging import interactive, protocol_notes, provenance
from util.metrics import hit_rate, topk_hits
from util.pixels import PIXEL_VIEWS, pixel_knn_scores
from util.runtime import script_entry, start_run
from util.tracking import Tracker, WandbSpec, init_tracker

logger = logging.getLogger("deepcluster")

STATE_NAME = "linear_state.pth"
DEPARTURES = """protocol notes (mmselfsup / Goyal et al. 2019), and where this script departs from them:
  multihead  taps Feature1..5, AvgPool2d (10,10,4) (16,8,0) (13,5,0) (8,3,0) (6,1,0) for ResNet-50 at 224 px;
             other archs / sizes: adaptive pooling to about 9216 dims per tap (capped at the map size).
             BatchNorm without affine + Linear per tap; SGD nesterov 0.9, lr 0.01, wd 1e-4, lr x0.1 at the steps of
             --schedule: imagenet 90 epochs (30/60), places205 28 (7/14/21), inat18 84 (24/48/72); the LAST epoch is
             reported. Distributed on GPUs the heads' BatchNorm is SyncBatchNorm (global-batch statistics, as
             mmselfsup); several CPU processes (gloo) have no SyncBatchNorm: each normalises its own shard.
  avgpool    global average pool of Feature5 -> Linear; SGD 0.9, lr 30, wd 0, 100 epochs, x0.1 at 60% and 80%;
             the BEST epoch is reported.
  knn        weighted kNN on L2-normalised AvgPool features, k=20, T=0.07, cosine similarity (no training).
  baselines  (not in the protocol) --baseline all: the random-init network scored twice, with BatchNorm's initial
             statistics (random_init_*) and with statistics recomputed on the training images (one no-grad pass,
             random_init_recomputed_bn_*), the gain (KEY_gain) over the higher of the two; the pixels (pixels_*,
             images of at most 64 px): kNN on the flattened input images in two views, the network's input and each
             image centred on its own mean (pixels / 255), the higher reported (pixels_knn_view), and the AvgPool
             probe on the network's-input view; no multi-head. KEY_gain_pixels: the gain over the pixels.
  training views: RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4) + Lighting (AlexNet PCA noise, std 0.1), as
             mmselfsup's multi-head config (the AvgPool probe uses the same view); evaluation: resize + center crop.
             In memory (cifar10), the batched augmentation: bilinear crops, jitter in a fixed order.
  --cached-features  DEPARTS from the protocol: features of the evaluation view are extracted once and the heads
             train on them without augmentation (much faster; numbers usually a little different).
  state      OUTPUT_DIR/linear_state.pth keeps each task (network x protocol) under the sha256 of the weights and
             every protocol flag: a task resumes or is reused only when both match; results.json and every table
             row name the weights (path, sha256) that produced them."""

# Multi-head schedules of mmselfsup's benchmark configs: (epochs, lr steps as fractions of the epochs), gamma 0.1.
MULTIHEAD_SCHEDULES = {
    "imagenet": (90, (30 / 90, 60 / 90)),  # steps at 30, 60
    "places205": (28, (7 / 28, 14 / 28, 21 / 28)),  # steps at 7, 14, 21
    "inat18": (84, (24 / 84, 48 / 84, 72 / 84)),  # steps at 24, 48, 72
}


@dataclass(frozen=True)
class ProbeSchedule:
    """A probe's optimisation: SGD for `epochs`, the learning rate x0.1 at each milestone (fractions of the epochs)."""

    epochs: int
    lr: float
    wd: float
    milestones: tuple[float, ...]
    nesterov: bool


PROTOCOL_DEFAULTS = {  # mmselfsup's multi-head probe (90 epochs, steps at 30/60) and the AvgPool probe (100, 60/80)
    "multihead": ProbeSchedule(epochs=90, lr=0.01, wd=1e-4, milestones=(1 / 3, 2 / 3), nesterov=True),
    "avgpool": ProbeSchedule(epochs=100, lr=30.0, wd=0.0, milestones=(0.6, 0.8), nesterov=False),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster linear evaluation", add_help=False)
    add_evaluated_model_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("protocol")
    group.add_argument("--protocol", choices=("multihead", "avgpool", "knn", "all"), default="all")
    group.add_argument(
        "--epochs", type=positive_int, default=None, help="override the protocol's epochs (multihead 90, avgpool 100)"
    )
    group.add_argument(
        "--schedule",
        choices=sorted(MULTIHEAD_SCHEDULES),
        default="imagenet",
        help="multi-head schedule preset: imagenet 90 epochs (steps 30/60), places205 28 (7/14/21), inat18 84 "
        "(24/48/72); --epochs rescales its steps",
    )
    group.add_argument("--batch-size", type=positive_int, default=256, help="(protocol: 256)")
    group.add_argument("--lr", type=float, default=None, help="override the protocol's lr (multihead 0.01, avgpool 30)")
    group.add_argument(
        "--wd", type=float, default=None, help="override the protocol's weight decay (multihead 1e-4, avgpool 0)"
    )
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--knn-k", type=positive_int, default=KNN_K)
    group.add_argument("--knn-temperature", type=float, default=KNN_TEMPERATURE)
    group.add_argument(
        "--cached-features",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="extract frozen features once, no augmentation (fast; departs from the protocol)",
    )
    add_baseline_arg(group)
    add_runtime_args(parser, kind="evaluation")
    add_wandb_args(parser)
    return parser


@dataclass
class Task:
    """One (network, protocol) evaluation; its results land under `prefix + key`."""

    network: str  # a key of NETWORK_PREFIXES
    weights: Checkpoint | str  # the checkpoint (read once), "random" or "pixels"
    protocol: str
    key: str = ""  # content hash of the weights + every flag that defines the protocol: what state is keyed by

    @property
    def name(self) -> str:
        return f"{self.network}/{self.protocol}"

    @property
    def prefix(self) -> str:
        return NETWORK_PREFIXES[self.network]


# Flags that change a task's numbers: a task is resumed or reused only when all of them and the weights match.
PROTOCOL_FLAGS = ("arch", "sobel", "data", "subset", "image_size", "in_memory", "cached_features", "batch_size")
PROTOCOL_FLAGS += ("momentum", "knn_k", "knn_temperature", "seed")


def task_key(args: argparse.Namespace, protocol: str, weights_hash: str) -> str:
    flags = {name: getattr(args, name) for name in PROTOCOL_FLAGS}
    if protocol != "knn":
        flags.update(asdict(protocol_hyperparameters(args, protocol)))
    text = json.dumps({"weights_sha256": weights_hash, "protocol": protocol, **flags}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_tasks(args: argparse.Namespace, networks: list[tuple[str, str]], hashes: dict[str, str]) -> list[Task]:
    """Every (network, protocol) pair to score; the pixels have no multi-head taps."""
    protocols = ("multihead", "avgpool", "knn") if args.protocol == "all" else (args.protocol,)
    return [
        Task(network, weights, protocol, task_key(args, protocol, hashes[network]))
        for network, weights in networks
        for protocol in protocols
        if not (network == "pixels" and protocol == "multihead")
    ]


def main(args: argparse.Namespace) -> None:
    # ---- set-up
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir, args.dist_timeout)
    checkpoint, lineage = resolve_pretrained(args)
    resolve_data_defaults(args)

    # ---- data: train split for the heads, val (or test) split for the numbers
    train, val = eval_sources(args)
    num_classes = len(train.images.classes)
    if val.images.classes != train.images.classes:
        raise UserError(
            f"train and val class folders differ ({len(train.images.classes)} vs {len(val.images.classes)}): fix --data"
        )
    logger.info(
        "%d train / %d val images, %d classes, %s",
        len(train),
        len(val),
        num_classes,
        "cached features (fast mode)" if args.cached_features else "live features (protocol)",
    )

    # ---- the weights' content hashes key every task; resume or reuse only tasks with the same key
    networks = networks_to_evaluate(checkpoint, args.baseline)
    networks, skipped = measurable_networks(networks, len(train), len(val), args.image_size)
    identities = network_identities(networks, args.arch, args.sobel, args.seed)
    tasks = plan_tasks(args, networks, {network: w["sha256"] for network, w in identities.items()})
    state = EvalState.load(output_dir / STATE_NAME)
    plan = plan_id([task.key for task in tasks])
    tracker = init_tracker(
        WandbSpec.from_args(args),
        output_dir,
        job_type="linear",
        config={**vars(args), **provenance(), "identities": identities},
        run_id=state.wandb_runs.get(plan),
        epoch_metrics=("probe/*",),
        lineage=lineage,
    )
    state.wandb_runs[plan] = tracker.run_id

    # ---- every task (network x protocol), one network's features at a time; then the intervals over the images
    results: dict = {}
    statistics: dict = {}  # results key -> its bootstrap statistic, from the task's per-image hits
    for task, found in run_tasks(args, tasks, (train, val), identities, state, tracker, device):
        statistics.update(hit_statistics(found.pop("per_image", None), task.prefix))
        results.update({task.prefix + k: v for k, v in found.items()})
    if info.is_main:
        warn_without_interval(
            results, statistics, [f"{t}_top{k}" for t in [*TAP_NAMES, "avgpool", "knn"] for k in (1, 5)]
        )
        add_intervals(results, statistics, len(val), args.seed)
        results.update({"pixels_not_measured": skipped} if skipped is not None else {})
        write_results(args, results, identities, output_dir, tracker)
    tracker.finish()
    dist_util.cleanup()


def run_tasks(args, tasks: list[Task], splits, identities: dict, state: EvalState, tracker, device):
    """Each task with its results (a copy): reused from the state when its key is there, else measured and kept
    there. splits: (train, val) sources."""
    train, val = splits
    num_classes = len(train.images.classes)
    features_by_network: dict[str, object] = {}
    for task in tasks:
        if task.key in state.tasks:
            short_hash = identities[task.network]["sha256"][:12]
            logger.info("== %s: reusing results of the same weights (sha256 %s) and flags", task.name, short_hash)
        elif task.network == "pixels" and task.protocol == "knn":  # both views of the pixels, not one network's
            state.finish(
                task.key, task.name, identities[task.network], pixel_knn_eval(train, val, num_classes, args, device)
            )
        else:
            if task.network not in features_by_network:
                features_by_network.clear()  # one network's features at a time
                features_by_network[task.network] = make_features(args, task, train, val, device)
            found = run_task(args, task, features_by_network[task.network], num_classes, device, state, tracker)
            state.finish(task.key, task.name, identities[task.network], found)
        yield task, dict(state.tasks[task.key]["results"])


def eval_sources(args: argparse.Namespace) -> tuple[ImageSource, ImageSource]:
    spec = augment_preset("linear", args.image_size)  # mmselfsup's multi-head training view
    cache = Path(args.data_cache)
    train = build_source(args.data, "train", args.image_size, spec, args.subset, args.in_memory, args.workers, cache)
    val_split = evaluation_split(args.data)
    val = build_source(args.data, val_split, args.image_size, spec, None, args.in_memory, args.workers, cache)
    return train, val


def make_features(args: argparse.Namespace, task: Task, train: ImageSource, val: ImageSource, device: torch.device):
    """The probes' inputs from the task's network (the pixels: the flattened input images)."""
    torch.manual_seed(args.seed)  # the random-init baseline is reproducible
    backbone = evaluated_network(task.network, task.weights, args.arch, args.sobel, device, train, args.channels_last)
    if isinstance(backbone, PixelNet):
        pooling = NoTaps()
    else:
        pooling = build_tap_pooling(backbone, args.arch, args.image_size, device)
    kind = CachedFeatures if args.cached_features else LiveFeatures
    return kind(backbone, pooling, train, val, args.batch_size, device, args.seed, interactive())


def run_task(args, task: Task, features, num_classes: int, device, state: EvalState, tracker: Tracker) -> dict:
    logger.info("== %s", task.name)
    if task.protocol == "knn":
        return knn_eval(features, num_classes, args.knn_k, args.knn_temperature, device)
    hp = protocol_hyperparameters(args, task.protocol)
    return train_probe(task, hp, args, features, num_classes, device, state, tracker)


def protocol_hyperparameters(args: argparse.Namespace, protocol: str) -> ProbeSchedule:
    """The protocol's defaults (the multi-head ones from --schedule) with the --epochs/--lr/--wd overrides."""
    hp = PROTOCOL_DEFAULTS[protocol]
    if protocol == "multihead":
        epochs, milestones = MULTIHEAD_SCHEDULES[args.schedule]
        hp = replace(hp, epochs=epochs, milestones=milestones)
    return replace(hp, **{k: getattr(args, k) for k in ("epochs", "lr", "wd") if getattr(args, k) is not None})


def build_probe(task: Task, features, num_classes: int, device: torch.device) -> torch.nn.Module:
    pooled, avg, _, _ = next(iter(features.val_batches()))
    if task.protocol == "multihead":
        return MultiHead([p.shape[1] for p in pooled], [p[0].numel() for p in pooled], num_classes).to(device)
    return AvgPoolHead(avg.shape[1], num_classes).to(device)


def train_probe(task, hp: ProbeSchedule, args, features, num_classes, device, state: EvalState, tracker) -> dict:
    """SGD with step decay; evaluates every epoch; resumable from the state file after any epoch."""
    probe = build_probe(task, features, num_classes, device)
    trained = probe
    if dist_util.current().distributed:
        if device.type == "cuda":  # the heads' BatchNorm normalises over the global batch, as mmselfsup's SyncBN
            probe = trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(probe)
        trained = DistributedDataParallel(probe, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(
        probe.parameters(), lr=hp.lr, momentum=args.momentum, weight_decay=hp.wd, nesterov=hp.nesterov
    )
    milestones = [max(1, round(f * hp.epochs)) for f in hp.milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    history: list[dict] = []
    kept: dict = {}  # per-image hits of the epochs that can be reported (multi-head: the last; AvgPool: every one)
    start = 0
    current = state.resumable(task.key)
    if current:  # resume an interrupted probe of the same weights and flags
        probe.load_state_dict(current["probe"])
        optimizer.load_state_dict(current["optimizer"])
        scheduler.load_state_dict(current["scheduler"])
        history, start, kept = current["history"], current["epoch"], current.get("hits", {})
        logger.info("resumed %s at epoch %d", task.name, start)
    for epoch in range(start, hp.epochs):
        loss = probe_epoch(task, trained, optimizer, features.train_epoch(epoch))
        scheduler.step()
        accuracy, hits = probe_accuracy(task, probe, features)
        metrics = {"epoch": epoch, "loss": loss, **accuracy}
        for key, hit in hits.items():  # AvgPool reports its best epoch: the bootstrap picks it again per resample
            kept[key] = [hit] if task.protocol == "multihead" else [*kept.get(key, []), hit]
        history.append(metrics)
        logger.info(
            "%s epoch %d/%d loss %.4f %s",
            task.name,
            epoch,
            hp.epochs,
            loss,
            " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith("top1")),
        )
        tracker.log({"probe/epoch": epoch, **{f"probe/{task.name}/{k}": v for k, v in metrics.items() if k != "epoch"}})
        state.progress(
            task.key,
            task=task.name,
            epoch=epoch + 1,
            probe=probe.state_dict(),
            history=history,
            hits=kept,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
        )
    if task.protocol == "multihead":  # protocol: the last epoch
        last = {key: hits[-1] for key, hits in kept.items()}
        return {**{k: v for k, v in history[-1].items() if k.startswith("feature")}, "per_image": {"hits": last}}
    best = max(history, key=lambda h: h["avgpool_top1"])  # protocol: the best epoch (the first of equals)
    return {
        "avgpool_top1": best["avgpool_top1"],
        "avgpool_top5": best["avgpool_top5"],
        "avgpool_best_epoch": best["epoch"],
        "per_image": {"hits": {key: np.stack(hits) for key, hits in kept.items()}, "select": "avgpool_top1"},
    }


def probe_epoch(task: Task, probe: torch.nn.Module, optimizer: torch.optim.Optimizer, batches) -> float:
    probe.train()
    total, count = 0.0, 0
    for pooled, avg, labels, _ in batches:
        outputs = probe(pooled) if task.protocol == "multihead" else [probe(avg)]
        loss = sum(F.cross_entropy(out, labels) for out in outputs)
        if not torch.isfinite(loss):
            raise UserError(f"probe loss is {loss.item()} in {task.name}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    if count == 0:
        raise UserError("no training batch: --batch-size is larger than the training set")
    return total / count


@torch.no_grad()
def probe_accuracy(task: Task, probe: torch.nn.Module, features) -> tuple[dict, dict]:
    """Top-1 / top-5 (%) of every head on the whole evaluation split, and their per-image hits (numpy bool)."""
    probe.eval()
    names = list(TAP_NAMES) if task.protocol == "multihead" else ["avgpool"]
    logits: list[list[torch.Tensor]] = [[] for _ in names]
    targets, indices = [], []
    for pooled, avg, labels, idx in features.val_batches():
        outputs = probe(pooled) if task.protocol == "multihead" else [probe(avg)]
        for store, out in zip(logits, outputs, strict=True):
            store.append(out.float().cpu())
        targets.append(labels.cpu())
        indices.append(idx)
    idx = torch.cat(indices)
    num = len(features.val_labels)
    target = dist_util.gather_rows_by_index(idx, torch.cat(targets), num)
    logits = [[dist_util.gather_rows_by_index(idx, torch.cat(store), num)] for store in logits]
    metrics, hits = {}, {}
    for name, store in zip(names, logits, strict=True):
        for k, hit in zip((1, 5), topk_hits(torch.cat(store), target, (1, 5)), strict=True):
            metrics[f"{name}_top{k}"] = hit_rate(hit)
            hits[f"{name}_top{k}"] = hit.numpy()
    return metrics, hits


def knn_eval(features, num_classes: int, k: int, temperature: float, device: torch.device) -> dict:
    train_feats, train_labels = features.avgpool_features("train")
    val_feats, val_labels = features.avgpool_features("val")
    scores = knn_predict(
        l2_normalize(train_feats).to(device),
        train_labels.to(device),
        l2_normalize(val_feats).to(device),
        num_classes,
        k,
        temperature,
    )
    hit1, hit5 = topk_hits(scores.cpu(), val_labels, (1, 5))
    top1, top5 = hit_rate(hit1), hit_rate(hit5)
    logger.info("knn (k=%d, T=%.2f): top1 %.2f top5 %.2f", k, temperature, top1, top5)
    return {
        "knn_top1": top1,
        "knn_top5": top5,
        "per_image": {"hits": {"knn_top1": hit1.numpy(), "knn_top5": hit5.numpy()}},
    }


def pixel_knn_eval(
    train: ImageSource, val: ImageSource, num_classes: int, args: argparse.Namespace, device: torch.device
) -> dict:
    """The pixels' weighted kNN in both views (util/pixels.py); the higher top-1 is reported (the first of equals),
    with its view and its per-image hits."""
    logger.info("== pixels/knn")
    k, temperature = args.knn_k, args.knn_temperature
    scores = pixel_knn_scores(train, val, num_classes, k, temperature, 2 * args.batch_size, device)
    targets = torch.from_numpy(val.targets)
    hits = {view: topk_hits(scores[view], targets, (1, 5)) for view in PIXEL_VIEWS}
    view = max(PIXEL_VIEWS, key=lambda v: hit_rate(hits[v][0]))
    hit1, hit5 = hits[view]
    logger.info(
        "pixels knn (k=%d, T=%.2f): top1 %s; reported: %s",
        k,
        temperature,
        ", ".join(f"{v} {hit_rate(hits[v][0]):.2f}" for v in PIXEL_VIEWS),
        view,
    )
    return {
        "knn_top1": hit_rate(hit1),
        "knn_top5": hit_rate(hit5),
        "knn_view": view,
        **{f"knn_top1_{v}": hit_rate(hits[v][0]) for v in PIXEL_VIEWS},
        "per_image": {"hits": {"knn_top1": hit1.numpy(), "knn_top5": hit5.numpy()}},
    }


def write_results(
    args: argparse.Namespace, results: dict, identities: dict, output_dir: Path, tracker: Tracker
) -> None:
    """results.json, a console table and a W&B table shaped like those of mmselfsup's DeepCluster model-zoo page;
    every row names the weights (path and content hash) that produced its numbers."""
    columns = ["Model", "Weights", "Config", *[name.capitalize() for name in TAP_NAMES], "AvgPool", "kNN"]
    config = f"{args.arch}{'+sobel' if args.sobel else ''}{' (cached)' if args.cached_features else ''}"
    keys = [f"{t}_top1" for t in TAP_NAMES] + ["avgpool_top1", "knn_top1"]
    rows = network_rows(
        results, identities, args.pretrained, lambda prefix: [config, *(results.get(prefix + key) for key in keys)]
    )
    rows += gain_row(results, keys, ["paired", config])
    meta = {
        "evaluation": "linear",
        "arch": args.arch,
        "sobel": args.sobel,
        "pretrained": args.pretrained,
        "identities": identities,
        "cached_features": args.cached_features,
        "data": args.data,
        "subset": args.subset,
        "schedule": args.schedule,
        "protocol_notes": protocol_notes(DEPARTURES),
    }
    title = f"top-1 (%) on {args.data}"
    publish(args, output_dir, results, meta, tracker, ResultsTable("linear_eval", title, columns, rows, tuple(keys)))


if __name__ == "__main__":
    script_entry("DeepCluster linear evaluation", get_args_parser, main, DEPARTURES)
