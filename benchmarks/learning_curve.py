"""Learning curves of pretraining runs from their log.jsonl: kNN top-1 (with the random-init floor) and NMI against
the labels, per epoch, drawn into one PNG; a Markdown summary line per run on stdout.

    python benchmarks/learning_curve.py runs/cifar10-cpu runs/cifar10-demo --output runs/curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from util.errors import UserError  # noqa: E402
from util.runtime import run_main  # noqa: E402


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass run folders of main_deepcluster.py (they hold log.jsonl)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_line(name: str, records: list[dict]) -> str:
    """| run | epochs | kNN floor | final kNN | gain | final NMI | test k-means acc | time min |"""
    final, first = records[-1], records[0]
    wall = sum(r.get("time_extract", 0) + r.get("time_cluster", 0) + r.get("time_train", 0) for r in records) / 60
    knn, floor = final.get("knn_top1"), first.get("knn_top1")
    gain = f"{knn - floor:+.2f}" if knn is not None and floor is not None else "-"

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    trained = sum(1 for r in records if not r.get("final"))
    return (
        f"| {name} | {trained} | {fmt(floor, '.2f')} | {fmt(knn, '.2f')} | {gain} "
        f"| {fmt(final.get('nmi_labels'), '.3f')} | {fmt(final.get('test_kmeans_acc'), '.2f')} | {wall:.1f} |"
    )


def plot(runs: dict[str, list[dict]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_knn, ax_nmi) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in runs.items():
        knn = [(r["epoch"], r["knn_top1"]) for r in records if r.get("knn_top1") is not None]
        if knn:
            line = ax_knn.plot(*zip(*knn, strict=True), marker="o", label=name)[0]
            ax_knn.axhline(knn[0][1], color=line.get_color(), linestyle="--", linewidth=0.8)
        nmi = [(r["epoch"], r["nmi_labels"]) for r in records if r.get("nmi_labels") is not None]
        if nmi:
            ax_nmi.plot(*zip(*nmi, strict=True), marker="o", label=name)
    ax_knn.set(xlabel="epochs trained", ylabel="kNN top-1 (%)", title="kNN on held-out split (dashed: random init)")
    ax_nmi.set(xlabel="epochs trained", ylabel="NMI(clusters, labels)", title="NMI of the clusters vs the labels")
    for ax in (ax_knn, ax_nmi):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or log.jsonl files)")
    parser.add_argument("--output", type=Path, default=Path("learning_curve.png"), help="PNG to write")
    args = parser.parse_args()
    runs = {(run.name if run.is_dir() else run.parent.name): read_log(run) for run in args.runs}
    print("| run | epochs | kNN floor | final kNN | gain | final NMI | test k-means acc | time min |")
    print("|---|---|---|---|---|---|---|---|")
    for name, records in runs.items():
        print(summary_line(name, records))
    plot(runs, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_main(main)
