"""Can the training machinery learn? The same pretraining loop twice with one budget: on the k-means pseudo-labels
(DeepCluster) and on the dataset's true labels (`--labels-from dataset`, a supervised sanity check). If the true
labels do not lift the kNN monitor far above the random-init floor, the bug is in training (augmentation, BN,
optimiser, head reset, data order); if they do and the clusters do not, look at the clustering dynamics.

    python benchmarks/sanity_true_labels.py --subset 10000 --epochs 3 --output-dir runs/sanity
Extra flags after `--` go to both runs of main_deepcluster.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.learning_curve import plot, read_log, summary_line  # noqa: E402
from util.errors import UserError  # noqa: E402
from util.runtime import run_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=10000, help="CIFAR-10 training images (default: 10000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/sanity"))
    parser.add_argument("extra", nargs="*", help="flags for main_deepcluster.py (after --)")
    args = parser.parse_args()
    runs = {}
    for labels in ("dataset", "clusters"):
        out = args.output_dir / f"labels-from-{labels}"
        cmd = [
            sys.executable,
            str(REPO / "main_deepcluster.py"),
            "--data",
            "cifar10",
            "--subset",
            str(args.subset),
            "--epochs",
            str(args.epochs),
            "--labels-from",
            labels,
            "--wandb-mode",
            "disabled",
            "--output-dir",
            str(out),
            *args.extra,
        ]
        print("$", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            raise UserError(f"the run with --labels-from {labels} failed (see above)")
        print(f"   {time.perf_counter() - start:.0f} s", flush=True)
        runs[f"--labels-from {labels}"] = read_log(out)
    print("| run | epochs | kNN floor | final kNN | gain | final NMI | test k-means acc | time min |")
    print("|---|---|---|---|---|---|---|---|")
    for name, records in runs.items():
        print(summary_line(name, records))
    plot(runs, args.output_dir / "sanity.png")


if __name__ == "__main__":
    run_main(main)
