"""DeepCluster-v2 against DeepCluster at equal wall time, side by side on this machine: the README's CPU recipe of
main_deepcluster.py (the quick start), then main_deepclusterv2.py with its CPU flags, one after the other. Each run's
wall time, its kNN floor (the random network, epoch 0) and final kNN are read from its own log.jsonl and written as
JSON; v2 meets the target when its final kNN is higher and its wall time is not longer.

    python benchmarks/dcv2_vs_v1.py --output-dir runs/dcv2-vs-v1
Flags after `--` go to the v2 run (they override the CPU flags below).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.learning_curve import read_log  # noqa: E402
from util.errors import UserError  # noqa: E402
from util.runtime import run_main  # noqa: E402

V1 = "--data cifar10 --epochs 6 --reassign 2 --pca-dim 256"  # the CPU recipe on 50k images, whatever the --subset
V2_CPU = (
    "--data cifar10 --arch resnet18 --epochs 7 --batch-size 64 --nmb-prototypes 100 100 100 --no-blur --knn-every 7 "
    "--trust 0.001 --no-lars-clip --no-lars-exclude-1d"
)


def run(script: str, flags: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(REPO / script), *flags, "--wandb-mode", "disabled", "--output-dir", str(out)]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise UserError(f"{script} failed (see above)")
    wall = time.perf_counter() - start
    records = read_log(out)
    return {
        "command": " ".join(["python", script, *flags]),
        "wall_s": round(wall, 1),
        "epochs": records[-1]["epoch"],
        "knn_floor": records[0]["knn_top1"],
        "final_knn": records[-1]["knn_top1"],
        "final_nmi_labels": records[-1]["nmi_labels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/dcv2-vs-v1"))
    parser.add_argument("--subset", type=int, default=None, help="CIFAR-10 training images for both (default: all)")
    parser.add_argument("extra", nargs="*", help="flags for main_deepclusterv2.py (after --)")
    args = parser.parse_args()
    subset = ["--subset", str(args.subset)] if args.subset else []
    v1 = run("main_deepcluster.py", [*V1.split(), *subset], args.output_dir / "v1")
    v2 = run("main_deepclusterv2.py", [*V2_CPU.split(), *subset, *args.extra], args.output_dir / "v2")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "v1": v1,
        "v2": v2,
        "v2_higher_knn": v2["final_knn"] > v1["final_knn"],
        "v2_not_slower": v2["wall_s"] <= v1["wall_s"],
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "dcv2_vs_v1.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| method | command | wall min | kNN floor | final kNN | gain |")
    print("|---|---|---|---|---|---|")
    for name, row in (("DeepCluster", v1), ("DeepCluster-v2", v2)):
        gain = row["final_knn"] - row["knn_floor"]
        print(
            f"| {name} | `{row['command']}` | {row['wall_s'] / 60:.1f} | {row['knn_floor']:.2f} | "
            f"{row['final_knn']:.2f} | {gain:+.2f} |"
        )
    print(json.dumps({k: result[k] for k in ("v2_higher_knn", "v2_not_slower")}))


if __name__ == "__main__":
    run_main(main)
