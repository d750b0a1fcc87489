"""The report's figures (matplotlib, PNG): training curves of several runs on one figure, the cluster-size
distribution per epoch, accuracy per layer, and the low-shot curve against the published one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from util.checkpoint import atomic_write
from util.eval.pretrained import NETWORK_LABELS, NETWORK_PREFIXES
from util.report.published import LOWSHOT_KS, published_rows
from util.report.sources import Evaluation, PretrainRun
from util.report.tables import TAP_COLUMNS

MAX_SIZE_CURVES = 12  # epochs drawn in the cluster-size figure of one run
# every network an evaluation scores: its results prefix, line style and label suffix
NETWORK_STYLES = tuple(
    (prefix, style, "" if network == "pretrained" else f" {NETWORK_LABELS[network]}")
    for (network, prefix), style in zip(NETWORK_PREFIXES.items(), ("-", "--", "-.", ":"), strict=True)
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


EPOCHS = "epochs trained"  # the x-axis of every per-epoch figure: the record of epoch e measures the network after e


def integer_epochs(*axes) -> None:
    """Whole epochs on the x-axis, never 0.25 or 0.96-1.04."""
    from matplotlib.ticker import MaxNLocator

    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    """The figure as a PNG, written atomically (util/checkpoint.atomic_write): a reader never sees half of it."""
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    _pyplot().close(fig)
    return path


def training_curves(runs: list[PretrainRun], path: Path) -> Path | None:
    """Loss, NMI against the labels (solid) and between consecutive epochs (dotted), kNN with each run's floors (the
    random network dashed, the pixels dotted), per epoch, one colour per run."""
    runs = [r for r in runs if r.records]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for ax, key, style in ((axes[0], "loss", "-"), (axes[1], "nmi_labels", "-"), (axes[1], "nmi_prev", ":")):
            points = [(r["epoch"], r[key]) for r in run.records if r.get(key) is not None]
            if points:
                label = run.name if style == "-" else None
                ax.plot(*zip(*points, strict=True), style, color=color, marker=".", label=label)
        knn = [(r["epoch"], r["knn_top1"]) for r in run.records if r.get("knn_top1") is not None]
        if knn:
            axes[2].plot(*zip(*knn, strict=True), color=color, marker="o", label=run.name)
            floors = run.floors()
            for key, style in (("knn_floor_random", "--"), ("knn_floor_pixels", ":")):
                if floors[key] is not None:
                    axes[2].axhline(floors[key], color=color, linestyle=style, linewidth=0.8)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="NMI", title="NMI: vs labels (solid), vs previous epoch (dotted)")
    axes[2].set(
        xlabel="epochs trained", ylabel="kNN top-1 (%)", title="kNN monitor (dashed: random init, dotted: pixels)"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def cluster_sizes(runs: list[PretrainRun], path: Path) -> Path | None:
    """Per run: the sizes of its clusters sorted largest first, one line per saved epoch (darker = later; at most
    12 epochs, evenly spaced), from the saved assignments; runs read from W&B show the logged min / median / max
    per epoch instead."""
    runs = [r for r in runs if r.records]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        saved = run.saved_epochs()
        if len(saved) > MAX_SIZE_CURVES:  # evenly spaced epochs, the first and the last among them
            saved = [saved[i] for i in np.unique(np.linspace(0, len(saved) - 1, MAX_SIZE_CURVES).round().astype(int))]
        if saved:
            cmap = plt.get_cmap("viridis")
            last = max(saved) or 1
            for epoch in saved:
                assignments = run.assignments(epoch)
                sizes = np.sort(np.bincount(assignments[assignments >= 0]))[::-1]
                ax.plot(np.arange(1, len(sizes) + 1), sizes, color=cmap(epoch / last), linewidth=1, label=f"{epoch}")
            ax.set(xlabel="cluster rank (largest first)", ylabel="images", yscale="log")
            ax.legend(title=EPOCHS, fontsize=6, ncol=2)
        else:
            for key, style in (("cluster_size_max", "^-"), ("cluster_size_median", "o-"), ("cluster_size_min", "v-")):
                points = [(r["epoch"], r[key]) for r in run.records if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=key.removeprefix("cluster_size_"))
            ax.set(xlabel=EPOCHS, ylabel="images per cluster", yscale="log")
            integer_epochs(ax)
            ax.legend(fontsize=7)
        ax.set_title(f"{run.name}: cluster sizes", fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def per_layer(evaluations: list[tuple[str, Evaluation]], path: Path) -> Path | None:
    """Top-1 of the multi-head probes Feature1..5 (and AvgPool) per evaluated network: pretrained (solid), random
    init (dashed; BatchNorm recomputed dash-dotted), the pixels (dotted, AvgPool only), the published rows (gray,
    their dataset named)."""
    measured = [(name, e) for name, e in evaluations if e.results.get("feature1_top1") is not None]
    if not measured:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    positions = np.arange(1, 7)
    labels = [*TAP_COLUMNS, "AvgPool"]
    keys = [f"feature{i}_top1" for i in range(1, 6)] + ["avgpool_top1"]
    for index, (name, evaluation) in enumerate(measured):
        color = f"C{index % 10}"
        for prefix, style, suffix in NETWORK_STYLES:
            values = [evaluation.results.get(prefix + key) for key in keys]
            points = [(p, v) for p, v in zip(positions, values, strict=True) if v is not None]
            if points:
                data = Path(str(evaluation.results.get("data", ""))).name
                ax.plot(*zip(*points, strict=True), style, color=color, marker="o", label=f"{name}{suffix} ({data})")
    for published in published_rows("linear", [e.results.get("data") for _, e in measured]):
        points = [(p, published.values[c]) for p, c in zip(positions, labels, strict=True) if c in published.values]
        ax.plot(*zip(*points, strict=True), ":", color="gray", marker="s", label=f"published ({published.data})")
    ax.set_xticks(positions, labels)
    ax.set(ylabel="top-1 (%)", title="linear probes per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def lowshot(evaluations: list[tuple[str, Evaluation]], path: Path) -> Path | None:
    """Low-shot SVM mAP against k (positives per class): ours and the random-init network's beside the published
    curve (VOC07, mmselfsup's DeepCluster)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for index, (name, evaluation) in enumerate(evaluations):
        color = f"C{index % 10}"
        for prefix, style, suffix in NETWORK_STYLES:
            points = sorted(
                (int(key.removeprefix(prefix + "lowshot_k").removesuffix("_map")), value)
                for key, value in evaluation.results.items()
                if key.startswith(prefix + "lowshot_k") and key.endswith("_map") and value is not None
            )
            if points:
                data = Path(str(evaluation.results.get("data", ""))).name
                ax.plot(*zip(*points, strict=True), style, color=color, marker="o", label=f"{name}{suffix} ({data})")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for published in published_rows("svm", [e.results.get("data") for _, e in evaluations]):
        values = [published.values[f"k={k}"] for k in LOWSHOT_KS]
        ax.plot(LOWSHOT_KS, values, ":", color="gray", marker="s", label=f"published ({published.data})")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="positives per class (k)", ylabel="mAP (%)", title="low-shot SVM on the best layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
