"""VOC07 linear SVM and low-shot SVM benchmark (Goyal et al. 2019, as used by mmselfsup) on frozen features.

Features of Feature1..Feature5 (pooled as in the multi-head protocol, images resized to 224x224) are extracted once
and cached in OUTPUT_DIR/features/, so SVM sweeps never re-extract. The trivial baselines are evaluated beside the
pretrained network (--baseline): the random-init network of the same architecture with BatchNorm's initial statistics
and with statistics recomputed on the training images, and the pixels (one "layer": the flattened input images, for
images of at most 64 px). The best layer's mAP comes with its bootstrap 95 % interval over the test images and the
paired gains over the random network (the higher of its two) and over the pixels (util/eval/bootstrap.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from util import dist as dist_util
from util.args import add_baseline_arg, add_data_args, add_evaluated_model_args, add_runtime_args, add_wandb_args
from util.augment import augment_preset
from util.checkpoint import atomic_write
from util.data import make_source, resolve_data_defaults
from util.errors import UserError
from util.eval.bootstrap import add_intervals, map_statistic
from util.eval.pretrained import (
    NETWORK_PREFIXES,
    PIXELS,
    Checkpoint,
    evaluated_network,
    measurable_networks,
    network_identities,
    networks_to_evaluate,
    resolve_pretrained,
)
from util.eval.probe_features import probe_inputs
from util.eval.probes import TAP_NAMES, build_tap_pooling
from util.eval.results import ResultsTable, gain_row, network_rows, publish
from util.eval.svm import (
    DEFAULT_COSTS,
    LOWSHOT_KS,
    LowShot,
    full_protocol,
    get_solver,
    l2_normalize_features,
    lowshot_protocol,
)
from util.eval.voc import LabelledSplit, is_voc_data, svm_splits
from util.logging import protocol_notes, provenance
from util.pixels import pixel_view
from util.runtime import script_entry, start_run
from util.tracking import Tracker, WandbSpec, init_tracker

logger = logging.getLogger("deepcluster")

DEPARTURES = """protocol (Goyal et al. 2019 / mmselfsup VOC07 SVM), with the choices that change numbers:
  data       VOC2007 trainval to train, test to evaluate; per-class files: 1 present, -1 absent, 0 difficult.
             Difficult images stay in training as negatives and are excluded only at test (published protocol).
  features   taps Feature1..5 pooled as the multi-head protocol, images resized to 224x224 (no crop);
             cast to float64 and divided by (L2 norm + 1e-5).
  full       one SVM per class: squared hinge, L2, class weight {+1: 2, -1: 1}, regularised bias; costs
             1, 10, 100, 2^-4 .. 2^-19 in that order (mmselfsup's list; a tie goes to the first listed); per
             class the cost of best 3-fold (stratified, unshuffled) cross-validated AP, scored with scikit-learn's
             non-interpolated average precision as the benchmark's cross_val_score; at test VOC all-point AP
             (precision envelope), not 11-point; mAP over classes.
  low-shot   k in 1..96: 5 samples of k positives and (C-1)k negatives per class (difficult excluded from the
             draws), no cross-validation, full test set; the cost is picked by the mean test mAP over the samples
             (as the published numbers), mean and std reported. Run on the best layer of the full protocol.
  --solver batched (default) solves all classes, costs and folds at once in torch (Newton's method, CPU or GPU):
             the same problems as the published liblinear, a different optimiser. Guarantee: every solution u is
             within a relative distance 1e-3 of its optimum (|u - u*| <= 1e-3 |u|, certified in float64 by
             |grad P(u)| / |u|; problems float32 leaves above it continue in float64; any still above are named in
             a warning; its agreement with liblinear and its speed: docs/benchmarks.md); --solver liblinear is
             scikit-learn's LinearSVC with the protocol's settings (the reference implementation).
  baselines  (not in the protocol) --baseline all: the random-init network with BatchNorm's initial statistics
             (random_init_*) and recomputed on the training images in the SVM's view (random_init_recomputed_bn_*),
             the gain over the higher; the pixels (pixels_*): the same SVMs on the flattened input images (the
             network's normalisation), the one layer `pixels`; not measured above 64 px (VOC07's 224 px).
  cache      OUTPUT_DIR/features is keyed by the sha256 of the weights and the flags that change the features;
             results.json and every table row name the weights (path, sha256) that produced them.
  ImageFolder / cifar10: one-vs-rest on a single-label dataset (no difficult images)."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DeepCluster VOC07 SVM evaluation", add_help=False)
    add_evaluated_model_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("protocol")
    group.add_argument("--layers", default=",".join(TAP_NAMES), help="comma-separated taps (default: all five)")
    group.add_argument("--protocol", choices=("full", "lowshot", "all"), default="all")
    group.add_argument(
        "--solver",
        choices=("batched", "liblinear"),
        default="batched",
        help="batched (default): all problems at once in torch, on --device; liblinear: scikit-learn LinearSVC, the "
        "reference (their agreement and speed: docs/benchmarks.md)",
    )
    group.add_argument("--costs", default=None, help="comma-separated SVM costs (default: 1,10,100 and 2^-4..2^-19)")
    group.add_argument("--lowshot-samples", type=int, default=5, help="independent samples per k (protocol: 5)")
    group.add_argument(
        "--lowshot-ks", default=",".join(map(str, LOWSHOT_KS)), help="comma-separated k (default: %(default)s)"
    )
    group.add_argument("--batch-size", type=int, default=128, help="images per forward at extraction")
    add_baseline_arg(group)
    add_runtime_args(parser, kind="evaluation")
    add_wandb_args(parser)
    return parser


def parse_list(text: str, kind: type, name: str, positive: bool = False) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise UserError(f"{name} {text!r} is not a comma-separated list of {kind.__name__}s") from err
    if not values:
        raise UserError(f"{name} is empty")
    if positive and min(values) <= 0:
        raise UserError(f"{name} {text!r}: every value must be positive")
    return values


def main(args: argparse.Namespace) -> None:
    # ---- set-up: the flags checked before anything is created
    layers = parse_list(args.layers, str, "--layers")
    unknown = [layer for layer in layers if layer not in TAP_NAMES]
    if unknown:
        raise UserError(f"--layers {','.join(unknown)} unknown: choose from {','.join(TAP_NAMES)}")
    costs = parse_list(args.costs, float, "--costs", positive=True) if args.costs else list(DEFAULT_COSTS)
    ks = parse_list(args.lowshot_ks, int, "--lowshot-ks", positive=True)
    info, device, output_dir = start_run(args.device, args.seed, args.deterministic, args.output_dir, args.dist_timeout)
    checkpoint, lineage = resolve_pretrained(args)
    if is_voc_data(args.data):  # the protocol: every image resized to 224 x 224, decoded per step
        args.image_size, args.in_memory = args.image_size or 224, bool(args.in_memory)
    else:
        resolve_data_defaults(args)

    # ---- data and W&B
    train, test = svm_splits(args.data, args.subset, Path(args.data_cache))
    logger.info(
        "%d train / %d test images, %d classes; layers %s; solver %s",
        len(train.images),
        len(test.images),
        len(train.classes),
        ",".join(layers),
        args.solver,
    )
    config = {**vars(args), **provenance()}
    tracker = init_tracker(WandbSpec.from_args(args), output_dir, "svm", config, lineage=lineage)

    # ---- per network: features (cached on disk), full SVM per layer, low-shot on the best layer
    networks = networks_to_evaluate(checkpoint, args.baseline)
    networks, skipped = measurable_networks(networks, len(train.images), len(test.images), args.image_size)
    identities = network_identities(networks, args.arch, args.sobel, args.seed)
    results: dict = {"pixels_not_measured": skipped} if skipped is not None else {}
    statistics: dict = {}  # the best layer's mAP from every layer's per-image scores, for the bootstrap intervals
    solver = get_solver(args.solver, str(device))
    for network, weights in networks:
        scored = [PIXELS] if network == "pixels" else layers  # the pixels are one "layer"
        splits = {"train": train, "test": test}
        feats = cached_features(args, network, weights, identities[network], splits, scored, device, output_dir)
        if not info.is_main:
            continue
        prefix = NETWORK_PREFIXES[network]
        found, layer_scores = svm_scores(args, feats, train, test, scored, costs, ks, solver)
        results.update({prefix + k: v for k, v in found.items()})
        if layer_scores:  # the best layer is picked again on every resample
            statistics[prefix + "best_map"] = map_statistic(layer_scores, test.labels)
    if info.is_main:
        add_intervals(results, statistics, len(test.labels), args.seed)
        write_results(args, results, identities, output_dir, tracker, ks)
    tracker.finish()
    dist_util.cleanup()


def cached_features(
    args,
    network: str,
    weights: Checkpoint | str,
    identity: dict,
    splits: dict[str, LabelledSplit],
    layers,
    device,
    output_dir: Path,
) -> dict[str, dict[str, np.ndarray]]:
    """{split: {layer: (N, D) float32}} from OUTPUT_DIR/features, extracted only when missing or stale: the cache is
    keyed by the weights' content hash (not their path or mtime) and every flag that changes the features."""
    folder = output_dir / "features"
    train, test = splits["train"], splits["test"]
    key = {
        "weights": identity["path"],
        "weights_sha256": identity["sha256"],
        "arch": args.arch,
        "sobel": args.sobel,
        "image_size": args.image_size,
        "in_memory": args.in_memory,
        "seed": args.seed,
        "train": len(train.images),
        "test": len(test.images),
        "train_paths": hashlib.sha256("\n".join(train.images.paths).encode()).hexdigest(),
        "test_paths": hashlib.sha256("\n".join(test.images.paths).encode()).hexdigest(),
    }
    meta_path = folder / f"{network}.json"
    loaded = None
    if dist_util.current().is_main:  # rank 0 reads the cache; every rank learns whether it must be made again
        loaded = load_feature_cache(folder, network, key, splits, layers)
    if not dist_util.broadcast_object(loaded is not None):
        extract_to_disk(args, network, weights, splits, layers, device, folder)
        if dist_util.current().is_main:
            text = json.dumps(key, indent=2)
            atomic_write(meta_path, lambda handle: handle.write(text.encode()))
            loaded = load_feature_cache(folder, network, key, splits, layers, fresh=True)
    dist_util.barrier()
    return loaded or {}  # the SVMs run on rank 0


def load_feature_cache(
    folder: Path, network: str, identity: dict, splits: dict, layers, fresh: bool = False
) -> dict[str, dict[str, np.ndarray]] | None:
    """The cached features when their key (the weights' hash and every flag that changes them) is this run's and
    every array reads back whole, one row per image; else None, said in one line when a file is damaged."""
    meta_path = folder / f"{network}.json"
    try:
        if not meta_path.is_file() or json.loads(meta_path.read_text()) != identity:
            return None
        found = {}
        for split, labelled in splits.items():
            found[split] = {}
            for layer in layers:
                path = folder / f"{network}-{split}-{layer}.npy"
                array = np.load(path)
                if array.ndim != 2 or len(array) != len(labelled.images):
                    raise ValueError(f"{path.name} holds {array.shape}, not one row per {split} image")
                found[split][layer] = array
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as err:  # cut off, overwritten, or not an array
        logger.warning("cached %s features in %s are damaged (%s): extracting them again", network, folder, err)
        return None
    if not fresh:  # (fresh: read back right after they were extracted)
        logger.info("using cached %s features in %s", network, folder)
    return found


@torch.inference_mode()
def extract_to_disk(args, network: str, weights: Checkpoint | str, splits: dict, layers, device, folder: Path) -> None:
    """Every split's features of every layer, in OUTPUT_DIR/features/NETWORK-SPLIT-LAYER.npy: the network's pooled
    taps, or the flattened input images (the pixels' one layer)."""
    spec = augment_preset("paper", args.image_size)
    sources = {
        split: make_source(labelled.images, args.image_size, spec, args.in_memory, args.workers, square=True)
        for split, labelled in splits.items()
    }
    torch.manual_seed(args.seed)
    backbone = evaluated_network(network, weights, args.arch, args.sobel, device, sources["train"], args.channels_last)
    if network == "pixels":

        def features(images: torch.Tensor) -> list[torch.Tensor]:
            return [pixel_view(images, "input")]  # (B, 3 S S) the network's input, flattened

    else:
        pooling = build_tap_pooling(backbone, args.arch, args.image_size, device)
        taps = [TAP_NAMES.index(layer) for layer in layers]

        def features(images: torch.Tensor) -> list[torch.Tensor]:
            pooled = probe_inputs(backbone, pooling, images)[0]
            return [torch.flatten(pooled[t], 1).float() for t in taps]

    for split, source in sources.items():
        start = time.perf_counter()
        columns = dist_util.sharded_map(
            np.arange(len(source)),
            lambda shard, source=source: source.eval_batches(shard, args.batch_size, device),
            features,
            len(source),
        )
        for layer, column in zip(layers, columns, strict=True):
            array = column.numpy()
            if dist_util.current().is_main:
                path = folder / f"{network}-{split}-{layer}.npy"
                atomic_write(path, lambda handle, array=array: np.save(handle, array))
        logger.info(
            "extracted %s %s features (%d images) in %.1fs", network, split, len(source), time.perf_counter() - start
        )


def svm_scores(
    args, feats, train: LabelledSplit, test: LabelledSplit, layers, costs, ks, solver
) -> tuple[dict, list[np.ndarray]]:
    """The full protocol on every layer and the low-shot protocol on the best one; and every layer's test scores
    (N, C), in --layers order (none without the full protocol)."""
    out: dict = {}
    test_scores: dict = {}
    normalised = {
        layer: (l2_normalize_features(feats["train"][layer]), l2_normalize_features(feats["test"][layer]))
        for layer in layers
    }
    if args.protocol in ("full", "all"):
        for layer in layers:
            start = time.perf_counter()
            full = full_protocol(*_xy(normalised[layer], train, test), costs, solver)
            out[f"{layer}_map"] = full["map"]
            out[f"{layer}_ap_per_class"] = dict(zip(train.classes, full["ap"], strict=True))
            test_scores[layer] = full["scores"]
            logger.info("full SVM %s: mAP %.2f (%.1fs)", layer, full["map"], time.perf_counter() - start)
        out["best_layer"] = max(layers, key=lambda layer: out[f"{layer}_map"])
        out["best_map"] = out[f"{out['best_layer']}_map"]
    if args.protocol in ("lowshot", "all"):
        lowshot_layers = [out["best_layer"]] if "best_layer" in out else layers
        for layer in lowshot_layers:
            start = time.perf_counter()
            draws = LowShot(ks, args.lowshot_samples, args.seed)
            low = lowshot_protocol(*_xy(normalised[layer], train, test), costs, solver, draws)
            for k, value in low.items():
                out[f"{layer}_lowshot_k{k}_map"], out[f"{layer}_lowshot_k{k}_std"] = value["map"], value["std"]
            logger.info(
                "low-shot SVM %s: %s (%.1fs)",
                layer,
                " ".join(f"k={k} {v['map']:.2f}" for k, v in low.items()),
                time.perf_counter() - start,
            )
        if "best_layer" not in out:
            out["best_layer"] = max(layers, key=lambda layer: np.mean([out[f"{layer}_lowshot_k{k}_map"] for k in ks]))
        for k in ks:
            out[f"lowshot_k{k}_map"] = out[f"{out['best_layer']}_lowshot_k{k}_map"]
            out[f"lowshot_k{k}_std"] = out[f"{out['best_layer']}_lowshot_k{k}_std"]
    return out, list(test_scores.values())


def _xy(normalised, train: LabelledSplit, test: LabelledSplit):
    train_x, test_x = normalised
    return train_x, train.labels, test_x, test.labels


def write_results(args, results: dict, identities: dict, output_dir: Path, tracker: Tracker, ks) -> None:
    """results.json, a console table and a W&B table shaped like those of mmselfsup's DeepCluster model-zoo page;
    every row names the weights (path and content hash) that produced its numbers."""
    columns = ["Model", "Weights", "Config", "Best Layer", "SVM", *[f"k={k}" for k in ks]]
    config = f"{args.arch}{'+sobel' if args.sobel else ''}"
    rows = network_rows(
        results,
        identities,
        args.pretrained,
        lambda prefix: [
            config,
            results.get(prefix + "best_layer"),
            results.get(prefix + "best_map"),
            *(results.get(f"{prefix}lowshot_k{k}_map") for k in ks),
        ],
    )
    rows += gain_row(results, ["best_map"], ["paired", config, "-"])
    rows = [row + [None] * (len(columns) - len(row)) for row in rows]  # the gain row has no low-shot gains
    meta = {
        "evaluation": "svm",
        "arch": args.arch,
        "sobel": args.sobel,
        "pretrained": args.pretrained,
        "identities": identities,
        "data": args.data,
        "subset": args.subset,
        "solver": args.solver,
        "protocol_notes": protocol_notes(DEPARTURES),
    }
    title = f"VOC07-style SVM mAP (%) on {args.data}"
    publish(args, output_dir, results, meta, tracker, ResultsTable("svm_eval", title, columns, rows, ("best_map",)))


if __name__ == "__main__":
    script_entry("DeepCluster VOC07 SVM evaluation", get_args_parser, main, DEPARTURES)
