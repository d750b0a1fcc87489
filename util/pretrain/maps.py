"""Embedding maps: a t-SNE (scikit-learn) of the kNN monitor's held-out features, coloured by label and by a k-means
(as many clusters as classes, on the same L2-normalised features), every --tsne-every epochs and for the final
network, as OUTPUT_DIR/maps/tsne_epoch_XXXX.png and a W&B image (`monitor/tsne`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from util.knn import l2_normalize
from util.pretrain.clustering import torch_kmeans
from util.tracking import Tracker

MAP_POINTS = 2000  # held-out images drawn (a fixed random sample beyond that): t-SNE is quadratic in them
FEATURES_KEY = "_held_out_features"  # the monitor hands the held-out features to the epoch's end under this key


def add_map_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--tsne-every",
        type=int,
        default=10,
        help="draw a t-SNE map of the held-out features every N epochs and for the final network (0: never; "
        "default: 10; about 10 s on a 2-core CPU for 2,000 images)",
    )


def map_due(args: argparse.Namespace, epoch: int, final: bool) -> bool:
    every = getattr(args, "tsne_every", 0)
    return every > 0 and (final or epoch % every == 0)


def tsne_path(output_dir: Path, epoch: int) -> Path:
    return Path(output_dir) / "maps" / f"tsne_epoch_{epoch:04d}.png"


def draw_tsne(features: torch.Tensor, labels: np.ndarray, path: Path, title: str, seed: int = 0) -> Path:
    """Two panels of one t-SNE of (M, D) features: coloured by label, and by k-means(number of classes)."""
    from sklearn.manifold import TSNE

    from util.report.plots import _pyplot, _save

    rows = np.random.default_rng(seed).permutation(len(labels))[:MAP_POINTS]
    points = l2_normalize(features[torch.from_numpy(rows)])
    labels = labels[rows]
    classes = int(labels.max()) + 1
    clusters = torch_kmeans(points, classes, 20, seed=seed).assignments
    perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points.numpy())
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, colour, name in ((axes[0], labels, "label"), (axes[1], clusters, f"k-means ({classes} clusters)")):
        axis.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab10" if classes <= 10 else "tab20", s=4)
        axis.set(title=f"coloured by {name}", xticks=[], yticks=[])
    fig.suptitle(title)
    return _save(fig, path)


def draw_epoch_map(
    args: argparse.Namespace, tracker: Tracker, output_dir: Path, record: dict, features: torch.Tensor, labels
) -> Path:
    epoch = record["epoch"]
    network = "final network" if record.get("final") else f"network after {epoch} epochs"
    title = f"{Path(output_dir).name}: t-SNE of the held-out features, {network}"
    path = draw_tsne(features, np.asarray(labels), tsne_path(output_dir, epoch), title, seed=args.seed)
    tracker.image("monitor/tsne", path, title, extra={"epoch": epoch})
    return path
