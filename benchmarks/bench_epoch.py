"""One DeepCluster epoch against a plain supervised epoch of the same network and data, phase by phase, side by
side in one run (alternating, best of --repeats), through main_deepcluster.py's own functions.

DeepCluster epoch: extract (one inference pass over every image, PCA-whitening) -> cluster -> pseudo-labels and
the uniform sampler -> train (a fresh head, --reassign x N images) -> bookkeeping (assignments and checkpoint
written atomically). Supervised epoch: the same training phase on the true labels (the same sampler, head, images
and steps), nothing else. The kNN monitor is not part of the method and is left off (it costs one more inference
pass over the held-out split).
    .venv/bin/python benchmarks/bench_epoch.py                           # CIFAR-10, 10,000 images, k=100
    .venv/bin/python benchmarks/bench_epoch.py --subset 50000 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main_deepcluster as mdc
from models import build_model
from models.neck import Trunk
from util.augment import augment_preset
from util.checkpoint import checkpoint_path, save_assignments, save_checkpoint
from util.data import build_source
from util.dist import DistInfo
from util.pretrain.clock import RunClock
from util.pretrain.clustering import pseudo_labels
from util.pretrain.features import extract_features
from util.pretrain.run import RunState, checkpoint_payload


def epoch_run(args, source, device) -> tuple[mdc.Run, torch.nn.Module]:
    """A fresh ResNet trunk and its optimizer in the script's own epoch context (one process, no monitor)."""
    trunk = Trunk(build_model(args.arch, args.sobel), None).to(device)
    optimizer = torch.optim.SGD(trunk.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    clock = RunClock(epochs_left=1, is_main=False)
    return mdc.Run(args, source, None, device, DistInfo(), clock, trunk, optimizer, np.random.default_rng(0)), trunk


def deepcluster_epoch(args, source, device, out: Path) -> dict:
    run, trunk = epoch_run(args, source, device)
    times = {}
    start = time.perf_counter()
    trunk.eval()
    features = extract_features(
        trunk.backbone, source, args.extract_batch_size, device, args.pca_dim, pca_fit_samples=args.pca_fit_samples
    )
    times["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    result = mdc.cluster(args, features, 0, device, DistInfo())
    labels, num = pseudo_labels(result.assignments)
    times["cluster"] = time.perf_counter() - start
    start = time.perf_counter()
    mdc.train_one_epoch(run, 0, labels, num, before_training=0.0)
    times["train"] = time.perf_counter() - start
    start = time.perf_counter()
    state = RunState(epoch=1, assignments=result.assignments)
    save_assignments(out, 0, result.assignments)
    saved = {"backbone": trunk.backbone, "neck": None, "optimizer": run.optimizer}
    save_checkpoint(checkpoint_payload(args, mdc.METHOD, mdc.DEPARTURES, state, **saved), checkpoint_path(out))
    times["bookkeeping"] = time.perf_counter() - start
    return times


def supervised_epoch(args, source, device) -> dict:
    run, _ = epoch_run(args, source, device)
    start = time.perf_counter()
    mdc.train_one_epoch(run, 0, source.targets.copy(), len(source.images.classes), before_training=0.0)
    return {"train": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=10_000, help="CIFAR-10 training images")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best time is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reassign", default="2", help="dataset passes per clustering (cifar10 default 2; paper 1)")
    own = parser.parse_args()
    argv = f"--data cifar10 --subset {own.subset} --knn-every 0 --reassign {own.reassign} --k 100 --pca-dim 256"
    argv += " --batch-size 256 --output-dir unused"
    args = mdc.finalize_args(mdc.get_args_parser().parse_args(argv.split()))
    device = torch.device(own.device)
    torch.manual_seed(0)
    source = build_source(
        args.data,
        "train",
        args.image_size,
        augment_preset(args.aug, args.image_size),
        args.subset,
        args.in_memory,
        args.workers,
        Path(args.data_cache),
    )
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(own.repeats):
            for name, run in (
                ("deepcluster", lambda: deepcluster_epoch(args, source, device, Path(out))),
                ("supervised", lambda: supervised_epoch(args, source, device)),
            ):
                times = run()
                if name not in best or sum(times.values()) < sum(best[name].values()):
                    best[name] = times
    dc, sup = best["deepcluster"], best["supervised"]
    print(
        f"CIFAR-10 {len(source)} images, {args.arch}, k={args.k}, --reassign {args.reassign} "
        f"({args.reassign * len(source):.0f} training images), batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {own.device}; best of {own.repeats}"
    )
    print(f"{'phase':12} {'DeepCluster s':>13} {'supervised s':>12}")
    for phase in ("extract", "cluster", "train", "bookkeeping"):
        print(f"{phase:12} {dc.get(phase, 0):>13.2f} {sup.get(phase, 0):>12.2f}")
    total_dc, total_sup = sum(dc.values()), sum(sup.values())
    overhead = dc["extract"] + dc["cluster"] + dc["bookkeeping"]
    print(f"{'epoch':12} {total_dc:>13.2f} {total_sup:>12.2f}   ratio {total_dc / total_sup:.2f}x (goal <= 1.30x)")
    inference = dc["extract"]
    above = (total_dc - dc["train"] - inference) / (dc["train"] + inference)
    print(
        f"extraction + clustering + bookkeeping: {overhead:.2f} s = {overhead / total_sup:.0%} of the supervised "
        f"epoch; the epoch is {above:.1%} above train + one inference pass (goal <= 5 %)"
    )


if __name__ == "__main__":
    main()
