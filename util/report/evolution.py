"""How a run's clusters evolve, from its saved assignments (OUTPUT_DIR/assignments/epoch_*.npy): per cluster its
best-match Jaccard with the previous epoch's clusters (how long clusters live), size and label purity over epochs,
and an alluvial figure of the largest clusters across epochs.

Overlaps come from the sparse contingency of two epochs' assignments (one np.unique over N pair codes): O(N log N),
never k x k. Images without a cluster in an epoch (negative assignments: DeepCluster-v2 marks the images its last
partial batch left out of the memory bank -100) belong to no cluster of that epoch: they count in no size, purity or
overlap, so every Jaccard index is still the exact one of the two clusters as sets of images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOP_CLUSTERS = 6  # clusters followed in the alluvial figure and the size / purity curves


@dataclass
class Overlaps:
    """The non-zero overlaps of clusters a (earlier epoch) and b (later epoch): pairs (a, b) and their counts."""

    a: np.ndarray
    b: np.ndarray
    count: np.ndarray
    size_a: np.ndarray  # (k_a,)
    size_b: np.ndarray  # (k_b,)

    @classmethod
    def of(cls, before: np.ndarray, after: np.ndarray) -> Overlaps:
        before, after = before.astype(np.int64), after.astype(np.int64)
        k_b = int(after.max()) + 1
        both = (before >= 0) & (after >= 0)  # images in a cluster of either epoch
        codes, count = np.unique(before[both] * k_b + after[both], return_counts=True)
        return cls(codes // k_b, codes % k_b, count, sizes_of(before), sizes_of(after, k_b))

    def best_jaccard(self) -> np.ndarray:
        """For every non-empty cluster of the later epoch: its largest Jaccard index with an earlier cluster."""
        jaccard = self.count / (self.size_a[self.a] + self.size_b[self.b] - self.count)
        best = np.zeros(len(self.size_b))
        np.maximum.at(best, self.b, jaccard)
        return best[self.size_b > 0]


@dataclass(frozen=True)
class Unstable:
    """A cluster of the later epoch that matches no earlier cluster well: its best Jaccard and best match."""

    cluster: int
    size: int
    jaccard: float
    match: int  # the earlier cluster of that Jaccard
    match_size: int


def least_stable(pairs: Overlaps, count: int) -> list[Unstable]:
    """The `count` non-empty clusters of the later epoch with the lowest best-match Jaccard against the clusters of
    the earlier one (ties: the larger cluster first, then the lower id), each with the earlier cluster it matches
    best (ties: the lower id)."""
    jaccard = pairs.count / (pairs.size_a[pairs.a] + pairs.size_b[pairs.b] - pairs.count)
    order = np.lexsort((pairs.a, -jaccard, pairs.b))  # per later cluster: best Jaccard first, ties to the lower id
    first = order[np.r_[True, pairs.b[order][1:] != pairs.b[order][:-1]]]  # one pair per later cluster
    clusters, best, match = pairs.b[first], jaccard[first], pairs.a[first]
    sizes = pairs.size_b[clusters]
    chosen = np.lexsort((clusters, -sizes, best))[:count]
    return [
        Unstable(int(clusters[i]), int(sizes[i]), float(best[i]), int(match[i]), int(pairs.size_a[match[i]]))
        for i in chosen
    ]


def sizes_of(assignments: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Images per cluster id 0..max (images without a cluster left out)."""
    return np.bincount(assignments[assignments >= 0], minlength=minlength)


def purity(assignments: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per cluster, the share of its images of its most frequent label (0 for an empty cluster)."""
    k, classes = int(assignments.max()) + 1, int(targets.max()) + 1
    kept = assignments >= 0
    codes = assignments[kept].astype(np.int64) * classes + targets[kept]
    table = np.bincount(codes, minlength=k * classes).reshape(k, classes)
    sizes = table.sum(1)
    return np.where(sizes > 0, table.max(1) / np.maximum(sizes, 1), 0.0)


def consecutive_overlaps(assignments: list[np.ndarray]) -> list[Overlaps]:
    """Overlaps of every epoch with the next: element i pairs epoch i with epoch i + 1."""
    return [Overlaps.of(before, after) for before, after in zip(assignments, assignments[1:], strict=False)]


def evolution_rows(
    epochs: list[int],
    assignments: list[np.ndarray],
    targets: np.ndarray | None,
    overlaps: list[Overlaps] | None = None,
) -> list[dict]:
    """One row per epoch: the median and quartiles of the best-match Jaccard with the epoch before, the share of
    clusters that keep a match of Jaccard >= 0.5 (survive), and the mean purity when labels exist."""
    overlaps = overlaps if overlaps is not None else consecutive_overlaps(assignments)
    rows = []
    for i, (epoch, current) in enumerate(zip(epochs, assignments, strict=True)):
        row = {"epoch": epoch, "clusters": int((sizes_of(current) > 0).sum())}
        if i > 0:
            best = overlaps[i - 1].best_jaccard()
            quartiles = np.percentile(best, [25, 50, 75])
            row.update(
                jaccard_q1=float(quartiles[0]), jaccard_median=float(quartiles[1]), jaccard_q3=float(quartiles[2])
            )
            row["surviving"] = float((best >= 0.5).mean())
        if targets is not None:
            sizes = sizes_of(current)
            row["purity_mean"] = float(np.average(purity(current, targets)[sizes > 0], weights=sizes[sizes > 0]))
        rows.append(row)
    return rows


def draw(
    epochs: list[int],
    assignments: list[np.ndarray],
    targets: np.ndarray | None,
    path: Path,
    title: str,
    overlaps: list[Overlaps] | None = None,
    rows: list[dict] | None = None,
) -> Path:
    """Three panels: best-match Jaccard per epoch (median and quartiles); size and purity of the last epoch's largest
    clusters followed back through their best matches; the alluvial figure of those clusters across epochs.
    `overlaps` and `rows`: consecutive_overlaps and evolution_rows of these epochs, where the caller has them."""
    from util.report.plots import EPOCHS, _pyplot, _save, integer_epochs

    plt = _pyplot()
    overlaps = overlaps if overlaps is not None else consecutive_overlaps(assignments)
    rows = rows if rows is not None else evolution_rows(epochs, assignments, targets, overlaps)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    measured = [r for r in rows if "jaccard_median" in r]
    if measured:
        x = [r["epoch"] for r in measured]
        low, high = [r["jaccard_q1"] for r in measured], [r["jaccard_q3"] for r in measured]
        median = [r["jaccard_median"] for r in measured]
        # quartiles as error bars: one pair of epochs (a 2-epoch run) still reads as a median and its spread
        axes[0].errorbar(
            x,
            median,
            yerr=[np.subtract(median, low), np.subtract(high, median)],
            marker="o",
            capsize=4,
            label="median (bars: quartiles)",
        )
        axes[0].plot(
            x, [r["surviving"] for r in measured], marker="s", linestyle="--", label="share with Jaccard >= 0.5"
        )
        axes[0].legend()
    axes[0].set(title="best-match Jaccard with the epoch before", xlabel=EPOCHS, ylim=(0, 1))

    lineages = follow_back(assignments, overlaps)  # per followed cluster, its cluster id at every epoch
    colours = plt.get_cmap("tab10")
    sizes_by_epoch = [sizes_of(a) for a in assignments]
    purity_by_epoch = [purity(a, targets) for a in assignments] if targets is not None else None
    purity_axis = axes[1].twinx() if targets is not None else None
    for row, lineage in enumerate(lineages):
        sizes = [s[c] if c >= 0 else 0 for s, c in zip(sizes_by_epoch, lineage, strict=True)]
        axes[1].plot(epochs, sizes, color=colours(row), marker=".", label=f"cluster {lineage[-1]}")
        if purity_axis is not None:
            purities = [p[c] if c >= 0 else 0 for p, c in zip(purity_by_epoch, lineage, strict=True)]
            purity_axis.plot(epochs, purities, color=colours(row), linestyle="--")
    axes[1].set(title="largest clusters: size (solid), purity (dashed)", xlabel=EPOCHS, ylabel="images")
    if purity_axis is not None:
        purity_axis.set(ylabel="purity", ylim=(0, 1))
    axes[1].legend(fontsize=7)
    alluvial(axes[2], epochs, sizes_by_epoch, overlaps, lineages, colours)
    integer_epochs(*axes)
    fig.suptitle(title)
    return _save(fig, path)


def follow_back(assignments: list[np.ndarray], overlaps: list[Overlaps] | None = None) -> list[list[int]]:
    """The last epoch's TOP_CLUSTERS largest clusters, each followed back epoch by epoch to its earlier cluster of
    largest overlap: a list of cluster ids per followed cluster, one per epoch."""
    sizes = sizes_of(assignments[-1])
    top = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0][:TOP_CLUSTERS]  # ties: the smaller id first
    lineages = [[int(c)] for c in top]
    overlaps = overlaps if overlaps is not None else consecutive_overlaps(assignments)
    for pair in reversed(overlaps):
        for lineage in lineages:
            mine = pair.b == lineage[0]
            lineage.insert(0, int(pair.a[mine][np.argmax(pair.count[mine])]) if mine.any() else -1)
    return lineages


def alluvial(
    axis, epochs: list[int], sizes: list[np.ndarray], overlaps: list[Overlaps], lineages: list[list[int]], colours
) -> None:
    """Bars: each followed cluster's share of the images per epoch, stacked; bands between consecutive epochs:
    the images a followed cluster keeps from one epoch to the next (their overlap)."""
    total = float(sizes[0].sum())
    heights = np.array(
        [[s[line[i]] / total if line[i] >= 0 else 0.0 for line in lineages] for i, s in enumerate(sizes)]
    )
    bottoms = np.cumsum(heights, axis=1) - heights  # (epochs, followed clusters)
    for step, epoch in enumerate(epochs):
        for row, lineage in enumerate(lineages):
            axis.bar(epoch, heights[step, row], bottom=bottoms[step, row], width=0.3, color=colours(row))
            if step + 1 < len(epochs):
                pair = overlaps[step]
                shared = (pair.a == lineage[step]) & (pair.b == lineage[step + 1])
                kept = pair.count[shared].sum() / total
                low, high = bottoms[step, row], bottoms[step + 1, row]
                axis.fill(
                    [epoch + 0.15, epochs[step + 1] - 0.15, epochs[step + 1] - 0.15, epoch + 0.15],
                    [low, high, high + kept, low + kept],
                    color=colours(row),
                    alpha=0.35,
                )
    axis.set(
        title="largest clusters across epochs (share of images)", xlabel="epochs trained", ylabel="share of images"
    )
