"""DeepCluster-v1 and DeepCluster-v2 against a plain supervised loop of the same network on the same crops, side by
side in one run (alternating, best of --repeats), through the scripts' own functions.

1. v1 epoch against a supervised epoch, phase by phase (main_deepcluster.py's functions). Goal: <= 1.30x.
2. v2 training steps against supervised steps on v2's crops (main_deepclusterv2.py's CIFAR-10 recipe: its backbone,
   its two 32 px crops per image, batch 256): the v2 step (projection, prototype heads, LARS, memory-bank write)
   against backbone + linear classifier, cross-entropy on the true labels, SGD. Goal: <= 1.15x.

DeepCluster epoch: extract (one inference pass over every image, PCA-whitening) -> cluster -> pseudo-labels and
the uniform sampler -> train (a fresh head, --reassign x N images) -> bookkeeping (assignments and checkpoint
written atomically). Supervised epoch: the same training phase on the true labels (the same sampler, head, images
and steps), nothing else. The kNN monitor is not part of the method and is left off (it costs one more inference
pass over the held-out split).
    .venv/bin/python benchmarks/bench_epoch.py                           # CIFAR-10, 10,000 images, k=100
    .venv/bin/python benchmarks/bench_epoch.py --subset 50000 --repeats 1
    .venv/bin/python benchmarks/bench_epoch.py --device cuda --amp       # on a GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn.functional as F
from torch import nn

import main_deepcluster as mdc
import main_deepclusterv2 as mdcv2
from models import build_model
from models.neck import Trunk
from util.augment import augment_preset, multicrop_specs
from util.checkpoint import checkpoint_path, save_assignments, save_checkpoint
from util.data import build_source
from util.dist import DistInfo
from util.precision import autocast, compile_in_place, to_channels_last
from util.pretrain.bank import MemoryBank
from util.pretrain.clock import RunClock
from util.pretrain.clustering import pseudo_labels
from util.pretrain.run import RunState, checkpoint_payload
from util.pretrain.schedule import warmup_cosine


def epoch_run(args, source, device) -> tuple[mdc.Run, torch.nn.Module]:
    """A fresh ResNet trunk and its optimizer in the script's own epoch context (one process, no monitor)."""
    trunk = to_channels_last(Trunk(build_model(args.arch, args.sobel), None).to(device), args.channels_last)
    compile_in_place(trunk.backbone, args.compile)
    optimizer = torch.optim.SGD(trunk.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    context = {"args": args, "info": DistInfo(), "device": device, "output_dir": Path("."), "source": source}
    clock = RunClock(epochs_left=1, is_main=False)
    run = mdc.Run(
        **context, monitor=None, clock=clock, trunk=trunk, optimizer=optimizer, cluster_rng=np.random.default_rng(0)
    )
    return run, trunk


def deepcluster_epoch(args, source, device, out: Path) -> dict:
    run, trunk = epoch_run(args, source, device)
    times = {}
    start = time.perf_counter()
    trunk.eval()
    features, _ = mdc.extract(run, trunk.backbone, 0)  # the script's own steps 1-2
    times["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    result = mdc.cluster(args, features, 0, device, DistInfo())
    labels, num = pseudo_labels(result.assignments)
    times["cluster"] = time.perf_counter() - start
    start = time.perf_counter()
    mdc.train_one_epoch(run, 0, labels, mdc.new_head(trunk.out_dim, num, device), before_training=0.0)
    times["train"] = time.perf_counter() - start
    start = time.perf_counter()
    state = RunState(epoch=1, assignments=result.assignments)
    save_assignments(out, 0, result.assignments)
    saved = {"backbone": trunk.backbone, "neck": None, "optimizer": run.optimizer}
    save_checkpoint(checkpoint_payload(args, mdc.METHOD.name, mdc.DEPARTURES, state, **saved), checkpoint_path(out))
    times["bookkeeping"] = time.perf_counter() - start
    return times


def supervised_epoch(args, source, device) -> dict:
    run, _ = epoch_run(args, source, device)
    start = time.perf_counter()
    head = mdc.new_head(run.trunk.out_dim, len(source.images.classes), device)
    mdc.train_one_epoch(run, 0, source.targets.copy(), head, before_training=0.0)
    return {"train": time.perf_counter() - start}


def v2_setup(own, device: torch.device):
    """main_deepclusterv2.py's CIFAR-10 recipe on the first --v2-steps x 256 images (in memory)."""
    argv = f"--data cifar10 --subset {own.v2_steps * 256} --batch-size 256 --knn-every 0 --output-dir unused"
    argv += own_flags(own)
    args = mdcv2.finalize_args(mdcv2.get_args_parser().parse_args(argv.split()), 1, device.type)
    specs = multicrop_specs(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops, args.blur)
    source = build_source(
        args.data, "train", args.image_size, specs[0], args.subset, True, args.workers, Path(args.data_cache)
    )
    source.place(device)
    return args, specs, source


def v2_steps(args, specs, source, device) -> dict:
    """One v2 epoch of training steps (no clustering: random assignments cost the loss the same)."""
    model, optimizer = mdcv2.build_model_and_optimizer(args, device, DistInfo())
    steps = len(source) // args.batch_size
    bank = MemoryBank(len(args.crops_for_assign), len(source), args.feat_dim, device)
    schedule = warmup_cosine(args.base_lr, args.final_lr, 1, steps, 0, args.start_warmup)
    context = {"args": args, "info": DistInfo(), "device": device, "output_dir": Path("."), "source": source}
    parts = {"model": model, "optimizer": optimizer, "bank": bank, "specs": specs, "schedule": schedule}
    run = mdcv2.Run(**context, monitor=None, clock=RunClock(1, False), **parts, steps_per_epoch=steps)
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, k, (len(source),), generator=gen) for k in args.nmb_prototypes]
    sync(device)
    start = time.perf_counter()
    mdcv2.train_one_epoch(run, 0, targets, before_training=0.0)
    sync(device)
    return {"train": time.perf_counter() - start, "images": steps * args.batch_size}


def supervised_steps(args, specs, source, device) -> dict:
    """The same crops through the same backbone and a linear classifier: cross-entropy on the true labels, SGD."""
    backbone = compile_in_place(build_model(args.arch, args.sobel), args.compile)
    model = to_channels_last(
        nn.Sequential(backbone, nn.Linear(backbone.feature_dim, 10)).to(device), args.channels_last
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=args.wd)
    labels = torch.from_numpy(source.targets).to(device)
    gen = torch.Generator().manual_seed(0)
    model.train()
    sync(device)
    start, images = time.perf_counter(), 0
    for crops, idx in source.multicrop_batches(np.arange(len(source)), specs, args.batch_size, device, gen):
        target = labels[idx.to(device)].repeat(len(crops))
        with autocast(device, args.amp):
            loss = F.cross_entropy(model(torch.cat(crops)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(idx)
    sync(device)
    return {"train": time.perf_counter() - start, "images": images}


def own_flags(own) -> str:
    return (
        (" --amp" if own.amp else "")
        + ("" if own.channels_last else " --no-channels-last")
        + (" --compile" if own.compile else "")
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_v2(own, device: torch.device) -> dict:
    args, specs, source = v2_setup(own, device)
    best: dict[str, dict] = {}
    for _ in range(own.repeats):
        for name, run in (("v2", v2_steps), ("supervised", supervised_steps)):
            times = run(args, specs, source, device)
            if name not in best or times["train"] < best[name]["train"]:
                best[name] = times
    v2, sup = best["v2"], best["supervised"]
    print(
        f"\nDeepCluster-v2 steps: CIFAR-10 {len(source)} images, {args.arch}, {len(specs)} crops of "
        f"{args.size_crops} px, batch {args.batch_size}, heads {args.nmb_prototypes}, amp {args.amp}, "
        f"channels_last {args.channels_last}, {own.device}; best of {own.repeats}"
    )
    print(f"{'':12} {'s':>8} {'images/s':>9} {'crops/s':>9}")
    for name, times in (("v2", v2), ("supervised", sup)):
        rate = times["images"] / times["train"]
        print(f"{name:12} {times['train']:>8.2f} {rate:>9.0f} {rate * len(specs):>9.0f}")
    ratio = (v2["train"] / v2["images"]) / (sup["train"] / sup["images"])
    print(f"v2 step / supervised step: {ratio:.2f}x (goal <= 1.15x)")
    rates = {name: times["images"] / times["train"] for name, times in best.items()}
    return {"v2_images_per_s": rates["v2"], "supervised_2crop_images_per_s": rates["supervised"], "v2_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=10_000, help="CIFAR-10 training images")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best time is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reassign", default="2", help="dataset passes per clustering (cifar10 default 2; paper 1)")
    parser.add_argument("--v2-steps", type=int, default=20, help="training steps of section 2 (batch 256)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in section 2 (both loops)")
    parser.add_argument("--only", choices=("v1", "v2"), default=None, help="one section only")
    parser.add_argument(
        "--v1-arch", default="resnet18", help="section 1's network (docs/benchmarks.md's rows: resnet18)"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones (each repeat builds new networks and compiles them again: keep the best)",
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    own = parser.parse_args()
    device = torch.device(own.device)
    found = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    found.update(amp=own.amp, channels_last=own.channels_last, compile=own.compile)
    if own.only != "v2":
        found.update(compare_v1(own, device))
    if own.only != "v1":
        found.update(compare_v2(own, device))
    if own.json:
        Path(own.json).write_text(json.dumps(found, indent=2) + "\n")


def compare_v1(own, device: torch.device) -> dict:
    argv = f"--data cifar10 --subset {own.subset} --knn-every 0 --reassign {own.reassign} --k 100 --pca-dim 256"
    argv += f" --batch-size 256 --arch {own.v1_arch} --output-dir unused" + own_flags(own)
    args = mdc.finalize_args(mdc.get_args_parser().parse_args(argv.split()), device_type=device.type)
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
    source.place(device)
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
    trained = args.reassign * len(source)
    return {
        "v1_epoch_s": total_dc,
        "supervised_epoch_s": total_sup,
        "v1_epoch_ratio": total_dc / total_sup,
        "v1_train_images_per_s": trained / dc["train"],
        "v1_phases_s": dc,
    }


if __name__ == "__main__":
    main()
