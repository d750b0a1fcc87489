"""Does DeepCluster learn on data it was not tuned on? The rows of docs/experiments.md, each a main_deepcluster.py
command, run one after the other and summarised from their log.jsonl: kNN against the floor (both ways), the lowest
epoch after the first, held-out k-means accuracy (mean +- std of 5 seeded runs) and NMI, wall time.

    python benchmarks/small_data.py --data sklearn-digits --output-dir runs/small-data            # the rule's row
    python benchmarks/small_data.py --data sklearn-digits --rows all --output-dir runs/small-data # every row
    python benchmarks/small_data.py --summarise runs/small-data/*                                 # finished runs

The targets (docs/experiments.md): on the digits, the rule's row ends >= 2 kNN points and >= 5 held-out k-means
points above its floor within 10 minutes; no epoch after the first is more than 1 point below the floor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from util.errors import UserError  # noqa: E402
from util.runtime import run_main  # noqa: E402

# The network of every row (docs/experiments.md): ResNet-18 with the ImageNet stem at the paper's rate.
ARCH = ["--arch", "resnet18"]
# The recipe every diagnosis row changes one flag of: the CPU flags CIFAR-10 was tuned with, applied to small images.
TUNED_ON_CIFAR = "--image-size 32 --in-memory --aug cifar --k 100 --reassign 2 --pca-dim 256 --batch-size 256"
ROWS = {
    "sklearn-digits": {
        "cifar-flags": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2",
        "true-labels": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --labels-from dataset",
        "noflip": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --aug noflip",
        "no-flip-only": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --no-flip",
        "crop-0.4-only": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --crop-scale 0.4 1",
        "batch-64": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --batch-size 64",
        "pca-32": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --pca-dim 32",
        "k-30": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --k 30",
        "head-lr-0.5": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --head-lr 0.5",
        "lr-0.01": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --lr 0.01",
        "neck": f"{TUNED_ON_CIFAR} --epochs 20 --knn-every 2 --neck mlp",
        "rule": "--epochs 5",
        "rule-seed-1": "--epochs 5 --seed 1",
        "rule-seed-2": "--epochs 5 --seed 2",
        "rule-flip": "--epochs 5 --aug cifar",
        "rule-pca-256": "--epochs 5 --pca-dim 256",
        "rule-reassign-4": "--epochs 10 --reassign 4",
        "rule-batch-256": "--epochs 5 --batch-size 256",
        "rule-neck": "--epochs 5 --neck mlp",
        "rule-k-50": "--epochs 5 --k 50",
        "rule-10-epochs": "--epochs 10",
        "rule-cifar-stem": "--epochs 2 --arch resnet18_cifar",
    },
    "cifar10": {
        "rule": "--epochs 6",
        "10k-reassign-4": "--subset 10000 --epochs 5 --reassign 4 --pca-dim 256",
        "10k-rule": "--subset 10000 --epochs 5",
        "10k-noflip": "--subset 10000 --epochs 5 --reassign 4 --pca-dim 256 --aug noflip",
        "10k-neck": "--subset 10000 --epochs 5 --reassign 4 --pca-dim 256 --neck mlp",
        "10k-true-labels": "--subset 10000 --epochs 3 --reassign 1 --pca-dim 256 --labels-from dataset",
    },
}


def summarise(run: Path, wall: float | None = None) -> dict:
    """The row of one finished run, from its log.jsonl (and its wall time, when it was timed)."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass run folders of main_deepcluster.py")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first, final = records[0], records[-1]
    if "knn_floor" not in first:
        raise UserError(f"{run} has no kNN monitor: run it with a labelled held-out split (--knn-every >= 1)")
    floor = first["knn_floor"]
    measured = [r for r in records if r.get("knn_top1") is not None]
    after_first = [r["knn_top1"] - floor for r in measured if r["epoch"] >= 2]
    return {
        "run": run.name,
        "epochs": sum(1 for r in records if not r.get("final")),
        "floor": floor,
        "floor_init_bn": first.get("knn_floor_init_bn"),
        "floor_recomputed_bn": first.get("knn_floor_recomputed_bn"),
        "knn": final["knn_top1"],
        "gain": final["knn_top1"] - floor,
        "lowest_after_first": min(after_first) if after_first else None,
        "kmeans_random": (first["test_kmeans_acc"], first["test_kmeans_acc_std"]),
        "kmeans_final": (final["test_kmeans_acc"], final["test_kmeans_acc_std"]),
        "nmi_labels": (first["nmi_labels"], final["nmi_labels"]),
        "wall_s": wall,
        "epoch_s": sum(r.get("time_extract", 0) + r.get("time_cluster", 0) + r.get("time_train", 0) for r in records),
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| run | epochs | floor (init BN / recomputed) | final kNN | gain | lowest after epoch 1 | held-out k-means "
        "random -> final | NMI labels 0 -> final | time |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lowest = "-" if r["lowest_after_first"] is None else f"{r['lowest_after_first']:+.2f}"
        (km0, sd0), (km1, sd1) = r["kmeans_random"], r["kmeans_final"]
        seconds = r["wall_s"] if r["wall_s"] is not None else r["epoch_s"]
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['floor_init_bn']:.2f} / {r['floor_recomputed_bn']:.2f} "
            f"| {r['knn']:.2f} | {r['gain']:+.2f} | {lowest} | {km0:.1f} +- {sd0:.1f} -> {km1:.1f} +- {sd1:.1f} "
            f"| {r['nmi_labels'][0]:.3f} -> {r['nmi_labels'][1]:.3f} | {seconds / 60:.1f} min |"
        )
    return "\n".join(lines)


def targets(row: dict) -> list[str]:
    """The digits targets, met or not, one line each."""
    km_gain = row["kmeans_final"][0] - row["kmeans_random"][0]
    lowest = row["lowest_after_first"]
    checks = [
        (row["gain"] >= 2.0, f"kNN {row['gain']:+.2f} over the floor (target >= +2)"),
        (km_gain >= 5.0, f"held-out k-means {km_gain:+.1f} over the random network (target >= +5)"),
        (lowest is None or lowest >= -1.0, f"no epoch after the first more than 1 point below the floor ({lowest})"),
        ((row["wall_s"] or row["epoch_s"]) <= 600, f"{(row['wall_s'] or row['epoch_s']) / 60:.1f} min (target <= 10)"),
    ]
    return [f"{'met' if ok else 'NOT met'}: {text}" for ok, text in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(ROWS), default="sklearn-digits")
    parser.add_argument("--rows", nargs="+", default=["rule"], help="row names, or `all` (default: rule)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/small-data"))
    parser.add_argument("--summarise", nargs="+", type=Path, default=None, help="summarise finished run folders only")
    args = parser.parse_args()
    if args.summarise:
        rows = [summarise(run) for run in args.summarise]
    else:
        names = list(ROWS[args.data]) if args.rows == ["all"] else args.rows
        unknown = [name for name in names if name not in ROWS[args.data]]
        if unknown:
            raise UserError(f"unknown rows {unknown} for {args.data}: choose from {', '.join(ROWS[args.data])}")
        rows = []
        for name in names:
            out = args.output_dir / args.data / name
            flags = ROWS[args.data][name].split()
            cmd = [sys.executable, str(REPO / "main_deepcluster.py"), "--data", args.data, *ARCH, *flags]
            cmd += ["--output-dir", str(out), "--wandb-mode", "disabled", "--cluster-images-every", "0"]
            print("$", " ".join(cmd[1:]), flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO)
            if proc.returncode != 0:
                raise UserError(f"row {name} failed (exit {proc.returncode}); its log is in {out}")
            rows.append(summarise(out, time.perf_counter() - start))
    print(markdown(rows))
    for row in rows:
        if row["run"] == "rule":
            print("\n".join(targets(row)))


if __name__ == "__main__":
    run_main(main)
