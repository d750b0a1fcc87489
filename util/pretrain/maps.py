"""Embedding maps: a t-SNE (scikit-learn) of the kNN monitor's held-out features, coloured by label and by a k-means
(as many clusters as classes), every --tsne-every epochs and for the final network, as
OUTPUT_DIR/maps/tsne_epoch_XXXX.png and a W&B image (`monitor/tsne`).

At every epoch the monitor measures (and --tsne-every is not 0), the map's points are saved first, small, as
OUTPUT_DIR/maps/points_epoch_XXXX.npz: a fixed sample of MAP_POINTS held-out images, their L2-normalised features
projected on their MAP_DIMS principal components (scikit-learn's advice before t-SNE), stored as float16, with the
images' labels. Every map is drawn from such a file, so `report.py RUN --tsne EPOCH` draws the same map for any
epoch the monitor measured, drawn during training or not."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from util.checkpoint import atomic_write
from util.knn import l2_normalize
from util.pretrain.clustering import torch_kmeans
from util.tracking import Tracker

MAP_POINTS = 2000  # held-out images drawn (a fixed random sample beyond that): t-SNE is quadratic in them
MAP_DIMS = 50  # principal components kept of the normalised features
FEATURES_KEY = "_held_out_features"  # the monitor hands the held-out features to the epoch's end under this key


def add_map_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--tsne-every",
        type=int,
        default=10,
        help="draw a t-SNE map of the held-out features every N epochs and for the final network, and keep the "
        "map's points of every measured epoch (maps/points_epoch_XXXX.npz) so that report.py --tsne draws any of them "
        "later (0: neither; default: 10)",
    )


def map_due(tsne_every: int, epoch: int, final: bool) -> bool:
    """Whether the map of this epoch is drawn: every --tsne-every epochs, and for the final network."""
    return tsne_every > 0 and (final or epoch % tsne_every == 0)


def maps_on(tsne_every: int) -> bool:
    """Whether the map points of every measured epoch are kept (--tsne-every > 0)."""
    return tsne_every > 0


def tsne_path(output_dir: Path, epoch: int) -> Path:
    return Path(output_dir) / "maps" / f"tsne_epoch_{epoch:04d}.png"


def points_path(output_dir: Path, epoch: int) -> Path:
    return Path(output_dir) / "maps" / f"points_epoch_{epoch:04d}.npz"


def saved_map_epochs(output_dir: Path) -> list[int]:
    return sorted(int(f.stem.split("_")[-1]) for f in (Path(output_dir) / "maps").glob("points_epoch_*.npz"))


def map_points(features: torch.Tensor, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample (MAP_POINTS held-out images drawn with `seed`), L2-normalised, centred and projected on its
    MAP_DIMS principal components, as float16 (M, d); and their labels."""
    rows = np.random.default_rng(seed).permutation(len(labels))[:MAP_POINTS]
    points = l2_normalize(features[torch.from_numpy(rows)].float()).double().numpy()
    centred = points - points.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return (centred @ components[:MAP_DIMS].T).astype(np.float16), np.asarray(labels)[rows].astype(np.int64)


def save_points(output_dir: Path, epoch: int, points: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """The map's points, their labels and the class names in maps/points_epoch_XXXX.npz."""
    path = points_path(output_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: np.savez(handle, points=points, labels=labels, names=np.array(names)))
    return path


def load_points(output_dir: Path, epoch: int) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """points, labels and class names (None in files saved without them)."""
    with np.load(points_path(output_dir, epoch)) as saved:
        names = [str(n) for n in saved["names"]] if "names" in saved.files else None
        return saved["points"], saved["labels"], names


def tsne_layout(points: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D t-SNE coordinates (M, 2) of the saved points and their k-means clusters (as many as classes)."""
    from sklearn.manifold import TSNE

    values = np.asarray(points, dtype=np.float32)
    classes = int(labels.max()) + 1
    clusters = torch_kmeans(torch.from_numpy(values), classes, 20, seed=seed).assignments
    perplexity = float(min(30.0, max(2.0, (len(values) - 1) / 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(values)
    return xy, np.asarray(clusters)


def draw_tsne(
    points: np.ndarray, labels: np.ndarray, path: Path, title: str, seed: int = 0, names: list[str] | None = None
) -> Path:
    """Two panels of one t-SNE of the saved points: coloured by label (a legend names them: `names`, else the label
    numbers), and by k-means(number of classes)."""
    from util.report.plots import _pyplot, _save

    xy, clusters = tsne_layout(points, labels, seed)
    classes = int(labels.max()) + 1
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for axis, colour, name in ((axes[0], labels, "label"), (axes[1], clusters, f"k-means ({classes} clusters)")):
        axis.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=cmap, vmin=0, vmax=max(classes - 1, 1), s=4)
        axis.set(title=f"coloured by {name}", xticks=[], yticks=[])
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=cmap(c / max(classes - 1, 1)), label=_name(c, names))
        for c in range(classes)
    ]
    axes[0].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="label")
    fig.suptitle(title)
    return _save(fig, path)


def _name(label: int, names: list[str] | None) -> str:
    return names[label] if names is not None and label < len(names) else str(label)


def map_title(output_dir: Path, epoch: int, final: bool) -> str:
    network = "random network (before training)" if epoch == 0 else f"network after {epoch} epochs"
    network = f"final network (after {epoch} epochs)" if final else network
    return f"{Path(output_dir).name}: t-SNE of the held-out features, {network}"


def draw_saved_map(output_dir: Path, epoch: int, seed: int, final: bool = False) -> Path:
    """The map of a saved epoch (maps/points_epoch_XXXX.npz) as maps/tsne_epoch_XXXX.png."""
    points, labels, names = load_points(output_dir, epoch)
    path, title = tsne_path(output_dir, epoch), map_title(output_dir, epoch, final)
    return draw_tsne(points, labels, path, title, seed=seed, names=names)


def epoch_map(
    tsne_every: int, seed: int, tracker: Tracker, output_dir: Path, record: dict, held_out: tuple
) -> Path | None:
    """Save the epoch's map points (held_out: the held-out features (M, D), labels (M,) and class names); draw its
    map when --tsne-every asks for it (or for the final network)."""
    epoch, final = record["epoch"], bool(record.get("final"))
    features, labels, names = held_out
    save_points(output_dir, epoch, *map_points(features, labels, seed), names)
    if not map_due(tsne_every, epoch, final):
        return None
    path = draw_saved_map(output_dir, epoch, seed, final)
    tracker.image("monitor/tsne", path, map_title(output_dir, epoch, final), extra={"epoch": epoch})
    return path
