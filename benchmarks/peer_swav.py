"""A peer in the same run: lightly's SwaV against this repository's DeepCluster-v2, on the same data, backbone, crops,
batch, epochs, optimiser and learning-rate schedule, both measured by the kNN monitor of main_deepclusterv2.py (its
protocol: weighted kNN, k 20, temperature 0.07, the backbone's pooled features, CIFAR-10's test split) before the
first step and after every epoch, with each method's cumulative training seconds (data, steps and clustering; the
measurements excluded).

Ours: main_deepclusterv2.py's CIFAR-10 recipe run in this process (its log.jsonl read back). lightly's SwaV: the
`lightly` package's SwaVLoss (Sinkhorn-Knopp, temperature and epsilon as ours), SwaVProjectionHead and SwaVPrototypes
(one head of the size of our first), its SwaVTransform per image in DataLoader workers (our crop sizes, counts and
scales, flips, colour jitter and grayscale; no blur, as our small-image recipe), on our backbone (--arch, default:
v2's for the data) and our LARS with the same schedule. Each method draws its own crops with its own pipeline: ours
batched on the device, lightly's per image with PIL, as each is used.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python benchmarks/peer_swav.py --subset 10000 --epochs 5 --arch resnet18   # the CPU table
    python benchmarks/peer_swav.py --subset 50000 --epochs 30 --device cuda --amp   # a GPU

`--only lightly --jsonl FILE` runs lightly's SwaV alone with the flags v2's recipe resolves for the data, writing one
JSON line per kNN measurement as it is made (benchmarks/time_to_accuracy.py reads it while the run goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main_deepclusterv2 as mdcv2
from models import build_model
from util.augment import augment_preset
from util.data import build_source, list_images, load_image, resolve_split, subset_indices
from util.knn import l2_normalize
from util.precision import autocast, to_channels_last
from util.pretrain.features import Extraction, extract_features
from util.pretrain.monitor import KnnMonitor, MonitorSpec, build_held_out
from util.pretrain.schedule import warmup_cosine


def ours(argv: list[str], out: Path) -> tuple[argparse.Namespace, list[dict]]:
    """main_deepclusterv2.py in this process; per epoch (epochs trained, kNN top-1, cumulative training seconds)."""
    args = mdcv2.get_args_parser().parse_args([*argv, "--knn-every", "1", "--output-dir", str(out)])
    mdcv2.main(args)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows, elapsed = [], 0.0
    for record in records:
        rows.append({"epoch": record["epoch"], "knn_top1": record["knn_top1"], "seconds": elapsed})
        elapsed += sum(v for k, v in record.items() if k.startswith("time_") and k != "time_monitor")
    return args, rows


class SwaVNet(nn.Module):
    def __init__(self, args: argparse.Namespace) -> None:
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__()
        self.backbone = build_model(args.arch, args.sobel)
        self.projection = SwaVProjectionHead(self.backbone.feature_dim, args.hidden_mlp, args.feat_dim)
        self.prototypes = SwaVPrototypes(args.feat_dim, args.nmb_prototypes[0])

    def forward(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.prototypes(nn.functional.normalize(self.projection(self.backbone(x)), dim=1)) for x in crops]


class TransformedImages(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.transform(load_image(self.paths[index]))


def swav_loader(args: argparse.Namespace, device: torch.device) -> torch.utils.data.DataLoader:
    """lightly's SwaVTransform per image in DataLoader workers, with our crop sizes, counts and scales."""
    from lightly.transforms.swav_transform import SwaVTransform

    images = list_images(resolve_split(args.data, "train", Path(args.data_cache)))
    paths = [images.paths[i] for i in subset_indices(len(images), args.subset)]
    transform = SwaVTransform(
        crop_sizes=tuple(args.size_crops),
        crop_counts=tuple(args.nmb_crops),
        crop_min_scales=tuple(args.min_scale_crops),
        crop_max_scales=tuple(args.max_scale_crops),
        hf_prob=0.5 if args.flip else 0.0,
        cj_strength=1.0,
        gaussian_blur=0.5 if args.blur else 0.0,
    )
    return torch.utils.data.DataLoader(
        TransformedImages(paths, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )


def knn_measurement(args: argparse.Namespace, device: torch.device) -> Callable[[nn.Module, int], dict]:
    """measure(backbone, epoch) -> the record of main_deepclusterv2.py's kNN monitor (its held-out split, k, T)."""
    source = build_source(
        args.data,
        "train",
        args.image_size,
        augment_preset("paper", args.image_size),
        args.subset,
        args.in_memory,
        args.workers,
        Path(args.data_cache),
    )
    held_out = build_held_out(args, source)
    for part in (source, held_out):
        part.place(device)
    monitor = KnnMonitor(MonitorSpec.from_args(args, device), source, held_out)
    how = Extraction(args.extract_batch_size, device, args.amp)

    def measure(backbone: nn.Module, epoch: int) -> dict:
        votes = monitor.listen(backbone)
        extract_features(backbone, source, how, on_raw_batch=votes.update)
        return monitor.measure(votes, epoch, l2_normalize)

    return measure


def swav_epoch(net: SwaVNet, loader, optimizer, schedule, criterion, step: int, amp: bool, device) -> int:
    """One epoch of lightly's SwaV steps with our schedule; returns the step count after it."""
    net.train()
    for crops in loader:
        for group in optimizer.param_groups:
            group["lr"] = float(schedule[step])
        net.prototypes.normalize()
        crops = [c.to(device, non_blocking=True) for c in crops]
        with autocast(device, amp):
            scores = net(crops)
        high, low = scores[:2], scores[2:]
        loss = criterion([s.float() for s in high], [s.float() for s in low])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return step


def lightly_swav(
    args: argparse.Namespace, device: torch.device, on_row: Callable[[dict], None] | None = None
) -> list[dict]:
    """lightly's SwaV with our backbone, crops, batch, epochs, LARS and schedule; kNN by our monitor every epoch
    (each row also handed to on_row as it is measured)."""
    from lightly.loss import SwaVLoss

    loader = swav_loader(args, device)
    torch.manual_seed(args.seed)
    net = to_channels_last(SwaVNet(args).to(device), args.channels_last)
    optimizer = mdcv2.lars_from_args(net, args)  # the same optimiser as ours
    schedule = warmup_cosine(
        args.base_lr, args.final_lr, args.epochs, len(loader), args.warmup_epochs, args.start_warmup
    )
    criterion = SwaVLoss(temperature=args.temperature, sinkhorn_epsilon=0.05)
    measure = knn_measurement(args, device)
    rows, elapsed, step = [], 0.0, 0
    for epoch in range(args.epochs + 1):
        knn = measure(net.backbone, epoch)
        rows.append({"epoch": epoch, "knn_top1": knn["knn_top1"], "seconds": elapsed})
        if on_row is not None:
            on_row(rows[-1])
        print(f"lightly SwaV: epoch {epoch} knn {knn['knn_top1']:.2f}  {elapsed:.0f} s", flush=True)
        if epoch == args.epochs:
            break
        start = time.perf_counter()
        step = swav_epoch(net, loader, optimizer, schedule, criterion, step, args.amp, device)
        elapsed += time.perf_counter() - start
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cifar10", help="cifar10 or sklearn-digits")
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for both")
    parser.add_argument("--arch", default=None, help="the backbone of both (default: the v2 recipe's for the data)")
    parser.add_argument("--only", choices=("lightly",), default=None, help="run lightly's SwaV alone")
    parser.add_argument("--jsonl", default=None, help="with --only lightly: one JSON line per measurement here")
    parser.add_argument("--output", default=None, help="also write the table as JSON here")
    own = parser.parse_args()
    argv = ["--data", own.data, "--epochs", str(own.epochs), "--device", own.device, "--seed", str(own.seed)]
    argv += ["--subset", str(own.subset)] if own.subset else []
    argv += ["--wandb-mode", "disabled", "--cluster-images-every", "0"] + (["--amp"] if own.amp else [])
    argv += ["--arch", own.arch] if own.arch else []
    device = torch.device(own.device)
    if own.only == "lightly":
        args = mdcv2.get_args_parser().parse_args([*argv, "--knn-every", "1", "--output-dir", "unused"])
        args = mdcv2.finalize_args(args, 1, device.type)
        start = time.perf_counter()

        def write(row: dict) -> None:
            if own.jsonl:
                with open(own.jsonl, "a") as handle:
                    handle.write(json.dumps({**row, "wall_s": time.perf_counter() - start}) + "\n")

        lightly_swav(args, device, write)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args, our_rows = ours(argv, Path(tmp) / "ours")
    peer_rows = lightly_swav(args, device)
    images = len(list_images(resolve_split(own.data, "train", Path(args.data_cache)))) if not own.subset else own.subset
    images = (images // args.batch_size) * args.batch_size
    print(
        f"\n{own.data} {images} training images, {args.arch}, {args.nmb_crops} x {args.size_crops} px crops, batch "
        f"{args.batch_size}, LARS base lr {args.base_lr}, {own.epochs} epochs, amp {args.amp}, {own.device}; kNN "
        f"(k {args.knn_k}, T {args.knn_temperature}) on the held-out split"
    )
    print(f"{'epoch':>5} {'DeepCluster-v2 kNN':>18} {'s':>7} {'lightly SwaV kNN':>16} {'s':>7}")
    for mine, peer in zip(our_rows, peer_rows, strict=False):
        print(
            f"{mine['epoch']:>5} {mine['knn_top1']:>18.2f} {mine['seconds']:>7.0f} "
            f"{peer['knn_top1']:>16.2f} {peer['seconds']:>7.0f}"
        )
    for name, rows in (("DeepCluster-v2", our_rows), ("lightly SwaV", peer_rows)):
        print(f"{name}: {own.epochs * images / rows[-1]['seconds']:.0f} training images/s (data, steps, clustering)")
    if own.output:
        table = {"args": vars(own), "ours": our_rows, "lightly_swav": peer_rows}
        Path(own.output).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
