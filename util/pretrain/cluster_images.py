"""A grid of sample images for a fixed choice of clusters (largest, median, smallest, random): what the clusters of
an epoch contain. Drawn from the run's saved assignments (assignments/epoch_XXXX.npy) and its training images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.checkpoint import atomic_write
from util.data import ImageList, list_images, load_image, resolve_split, subset_indices
from util.errors import UserError
from util.seeds import derive_seed

THUMB = 64  # pixels per sample image in the grid


@dataclass(frozen=True)
class ClusterRow:
    role: str  # largest, median, smallest, random
    cluster: int
    size: int
    members: np.ndarray  # the dataset indices drawn, sorted


def choose_clusters(
    assignments: np.ndarray, per_cluster: int, num_random: int, rng: np.random.Generator
) -> list[ClusterRow]:
    """The largest, median and smallest non-empty clusters (ties to the lower id) and `num_random` others drawn
    uniformly, each with up to `per_cluster` members drawn without replacement. Negative assignments (images not
    clustered, DeepCluster-v2's -100) are ignored."""
    valid = assignments[assignments >= 0]
    if len(valid) == 0:
        raise UserError("no image is assigned to a cluster: nothing to draw")
    sizes = np.bincount(valid)
    nonempty = np.flatnonzero(sizes)
    by_size = nonempty[np.lexsort((nonempty, -sizes[nonempty]))]  # largest first, ties by id
    chosen = {"largest": by_size[0], "median": by_size[len(by_size) // 2], "smallest": by_size[-1]}
    roles: list[tuple[str, int]] = []
    for role, cluster in chosen.items():
        if all(cluster != c for _, c in roles):
            roles.append((role, int(cluster)))
    rest = np.setdiff1d(nonempty, [c for _, c in roles])
    roles += [("random", int(c)) for c in rng.choice(rest, size=min(num_random, len(rest)), replace=False)]
    rows = []
    for role, cluster in roles:
        members = np.flatnonzero(assignments == cluster)
        drawn = np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False))
        rows.append(ClusterRow(role, cluster, int(sizes[cluster]), drawn))
    return rows


def thumbnail_strip(images: ImageList, members: np.ndarray, slots: int) -> np.ndarray:
    """The images `members` side by side, THUMB pixels square, in `slots` slots (white where fewer): (H, W, 3)."""
    strip = np.full((THUMB, THUMB * slots, 3), 255, dtype=np.uint8)
    for slot, index in enumerate(members[:slots]):
        strip[:, slot * THUMB : (slot + 1) * THUMB] = np.asarray(load_image(images.paths[index]).resize((THUMB, THUMB)))
    return strip


def _row_label(row: ClusterRow, images: ImageList, assignments: np.ndarray) -> str:
    """Role, cluster id, size and the most frequent label of the whole cluster with its share (its purity)."""
    labels = images.targets[assignments == row.cluster]
    top = np.bincount(labels).argmax()
    share = 100.0 * np.mean(labels == top)
    return f"{row.role}\n#{row.cluster}: {row.size} img\n{images.classes[top]} {share:.0f}%"


def draw_cluster_grid(
    images: ImageList,
    assignments: np.ndarray,
    output: Path,
    title: str,
    seed: int,
    per_cluster: int = 8,
    num_random: int = 3,
) -> list[ClusterRow]:
    """Write the grid as a PNG (one row per chosen cluster: its role, id, size, and its most frequent label with
    that label's share of the cluster); returns the rows drawn. The same seed draws the same clusters and images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(assignments) != len(images):
        raise UserError(
            f"{len(assignments)} assignments for {len(images)} images: the run's --data / --subset do not match "
            "its assignments"
        )
    rows = choose_clusters(assignments, per_cluster, num_random, np.random.default_rng(seed))
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 * per_cluster + 1.6, 1.05 * len(rows) + 0.5), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        ax.imshow(thumbnail_strip(images, row.members, per_cluster))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(_row_label(row, images, assignments), rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(output, lambda handle: fig.savefig(handle, format="png", dpi=80))
    plt.close(fig)
    return rows


def run_images(run_args: dict) -> ImageList:
    """The training images of a pretraining run, in the order of its assignments (its --data and --subset)."""
    cache = Path(run_args["data_cache"])
    images = list_images(resolve_split(run_args["data"], "train", cache))
    return images.subset(subset_indices(len(images), run_args.get("subset")))


def grid_path(output_dir: Path, epoch: int) -> Path:
    return Path(output_dir) / "clusters" / f"epoch_{epoch:04d}.png"


def draw_epoch_grid(output_dir: Path, epoch: int, images: ImageList, assignments: np.ndarray, seed: int) -> Path:
    """A run's grid of the clusters of the network after `epoch` epochs, in OUTPUT_DIR/clusters/: the same clusters
    and images whether drawn during training or later from the saved assignments (the draw is seeded by the run's
    --seed and the epoch)."""
    path = grid_path(output_dir, epoch)
    title = f"{Path(output_dir).name}: clusters of the network after {epoch} epochs"
    draw_cluster_grid(images, assignments, path, title, seed=derive_seed(seed, "cluster-grid", epoch))
    return path
