"""Batched (torch, util/eval/newton_svm.py) vs liblinear SVM solvers on the same CIFAR-10 features, side by side.

    .venv/bin/python benchmarks/svm_solvers.py --pretrained runs/cifar10-demo/checkpoint.pth

Prints, per layer and protocol (full: 3-fold cross-validation over 19 costs then the final fit; low-shot: every k,
5 samples, 19 costs), the mAP of each solver, their difference, the seconds each took and the speed-up. About 8
minutes on 2 cores, nearly all of it liblinear. The bar (issue 4): |mAP difference| <= 0.3 points and batched >= 10x
faster on a 2-core CPU (each solver runs one small problem first, untimed, so library start-up is not counted).
Run it on an idle machine: both solvers use the cores, so other jobs distort the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from util.augment import augment_preset
from util.data import list_images, make_source, resolve_split, subset_indices
from util.datasets import default_cache_dir
from util.dist import sharded_map
from util.eval.pretrained import load_backbone
from util.eval.probe_features import probe_inputs
from util.eval.probes import TAP_NAMES, build_tap_pooling
from util.eval.svm import (
    DEFAULT_COSTS,
    LOWSHOT_KS,
    LowShot,
    full_protocol,
    get_solver,
    l2_normalize_features,
    lowshot_protocol,
)
from util.eval.voc import folder_split


@torch.inference_mode()
def features(pretrained: str, split: str, num: int, layers: list[str]):
    device = torch.device("cpu")
    images = list_images(resolve_split("cifar10", split, default_cache_dir()))
    images = images.subset(subset_indices(len(images), num))
    labelled = folder_split(images)
    backbone = load_backbone(pretrained, None, None, device)
    pooling = build_tap_pooling(backbone, "resnet18", 32, device)
    source = make_source(images, 32, augment_preset("paper", 32), True, 2, square=True)
    columns = sharded_map(
        np.arange(len(source)),
        lambda shard: source.eval_batches(shard, 256, device),
        lambda batch: [torch.flatten(probe_inputs(backbone, pooling, batch)[0][TAP_NAMES.index(x)], 1) for x in layers],
        len(source),
    )
    return {layer: l2_normalize_features(c.numpy()) for layer, c in zip(layers, columns, strict=True)}, labelled.labels


def run_protocol(protocol: str, data: tuple, solver, ks: list[int]) -> tuple[float, float]:
    """(mAP, seconds); low-shot mAP is the mean over the ks."""
    start = time.perf_counter()
    if protocol == "full":
        score = full_protocol(*data, DEFAULT_COSTS, solver)["map"]
    else:
        result = lowshot_protocol(*data, DEFAULT_COSTS, solver, LowShot(ks, 5, 0))
        score = float(np.mean([v["map"] for v in result.values()]))
    return score, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--train", type=int, default=2000, help="CIFAR-10 train images (fixed subset)")
    parser.add_argument("--test", type=int, default=2000, help="CIFAR-10 test images (fixed subset)")
    parser.add_argument("--layers", default="feature5,feature3", help="512-d and 2048-d taps of a ResNet-18")
    parser.add_argument("--lowshot-ks", default=",".join(map(str, LOWSHOT_KS)))
    parser.add_argument("--device", default="cpu", help="where the batched solver runs (liblinear is CPU only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Liblinear failed to converge")  # reported once, below
    layers = args.layers.split(",")
    ks = [int(k) for k in args.lowshot_ks.split(",")]
    torch.set_num_threads(torch.get_num_threads())
    (train_x, train_y), (test_x, test_y) = (
        features(args.pretrained, "train", args.train, layers),
        features(args.pretrained, "test", args.test, layers),
    )
    for name in ("batched", "liblinear"):  # one small solve each first: library start-up is not solver time
        first = train_x[layers[0]][:200]
        get_solver(name, args.device)(first, np.where(train_y[:200] > 0, 1.0, -1.0), train_y[:200] != 0, np.ones(10))
    print(
        f"CIFAR-10 {args.train} train / {args.test} test images, {len(DEFAULT_COSTS)} costs, "
        f"{torch.get_num_threads()} threads, batched on {args.device}"
    )
    print(
        f"{'layer':9} {'protocol':10} {'dims':>5} {'liblinear mAP':>13} {'batched mAP':>11} {'diff':>6} "
        f"{'liblinear s':>11} {'batched s':>9} {'speed-up':>8}"
    )
    for layer in layers:
        for protocol in ("full", "lowshot"):
            runs = {}
            data = (train_x[layer], train_y, test_x[layer], test_y)
            for name in ("batched", "liblinear"):
                runs[name] = run_protocol(protocol, data, get_solver(name, args.device), ks)
            (lib_map, lib_s), (bat_map, bat_s) = runs["liblinear"], runs["batched"]
            label = protocol if protocol == "full" else f"low k={','.join(map(str, ks))}"
            dims = train_x[layer].shape[1]
            print(
                f"{layer:9} {label:10} {dims:>5} {lib_map:>13.2f} {bat_map:>11.2f} {bat_map - lib_map:>+6.2f} "
                f"{lib_s:>11.1f} {bat_s:>9.1f} {lib_s / bat_s:>7.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
