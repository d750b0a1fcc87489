"""Collapse alarms of a pretraining run, read from its epoch records (log.jsonl):

- the cluster sizes far from uniform: their normalised entropy (1 = every cluster the same size, 0 = one cluster
  holds every image) below --collapse-entropy (default 0.5);
- empty or re-seeded clusters jumping: more than a quarter of the clusters, and more than twice the previous epoch's;
- frozen clusters: NMI with the previous epoch's clusters at or above 0.99 for FROZEN_EPOCHS epochs running;
- the kNN monitor at or below the random network's floor (knn_floor_random: a network that fell to its own random
  init has collapsed; the pixels, a higher floor on small images, are no collapse test) for BELOW_FLOOR_MEASUREMENTS
  measurements running, after the first WARMUP_EPOCHS epochs (DeepCluster-v2 dips below its floor in its first
  epochs on small data).

Every condition is read from the record of epoch e, which measures the network after e epochs of training (its
clusters, its kNN): the network in checkpoint.pth while epoch e trains. Each alarm is a warning line, a `collapse`
list in the epoch's record (log.jsonl and W&B, with wandb.alert), and with --stop-on-collapse the run stops before the
checkpoint of epoch e + 1 is written: checkpoint.pth keeps the network whose measurement raised the alarm, and the
training of epoch e is discarded.

`num_clusters` is the number of non-empty clusters in both pretraining scripts; with `empty_clusters` it adds up to k.
"""

from __future__ import annotations

import argparse

import numpy as np

EMPTY_SHARE = 0.25
FROZEN_NMI, FROZEN_EPOCHS = 0.99, 3
BELOW_FLOOR_MEASUREMENTS, WARMUP_EPOCHS = 3, 5


def add_alarm_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--collapse-entropy",
        type=float,
        default=0.5,
        help="alarm when the cluster sizes' normalised entropy falls below this (1: uniform sizes; default: 0.5)",
    )
    group.add_argument(
        "--stop-on-collapse",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop at a collapse alarm (sizes, empty clusters, frozen clusters, kNN at the random network's floor: "
        "docs/training.md); checkpoint.pth keeps the network whose measurement raised it",
    )


def size_entropy(sizes: np.ndarray) -> float:
    """Entropy of the cluster-size distribution over log(number of clusters): 1 for equal sizes, 0 for one cluster."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) < 2 or sizes.sum() == 0:
        return 0.0
    p = sizes[sizes > 0] / sizes.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(sizes)))


def random_floor(record: dict) -> float | None:
    """The random network's kNN floor of a record (records written before the pixel floor: knn_floor)."""
    return record.get("knn_floor_random", record.get("knn_floor"))


def collapse_alarms(history: list[dict], record: dict, min_entropy: float) -> list[str]:
    """The alarms `record` raises given the records of the epochs before it (in order)."""
    alarms = []
    entropy = record.get("cluster_size_entropy")
    if entropy is not None and entropy < min_entropy:
        alarms.append(f"cluster sizes far from uniform: normalised entropy {entropy:.3f} < {min_entropy:g}")
    lost = (record.get("empty_clusters") or 0) + (record.get("reseeded_clusters") or 0)
    before = (history[-1].get("empty_clusters") or 0) + (history[-1].get("reseeded_clusters") or 0) if history else 0
    total = (record.get("num_clusters") or 0) + (record.get("empty_clusters") or 0)
    if total and lost > EMPTY_SHARE * total and lost > 2 * before:
        alarms.append(f"{lost} of {total} clusters empty or re-seeded (the epoch before: {before})")
    recent = [*history, record][-FROZEN_EPOCHS:]
    if len(recent) == FROZEN_EPOCHS and all((r.get("nmi_prev") or 0) >= FROZEN_NMI for r in recent):
        alarms.append(f"clusters frozen: NMI with the previous epoch >= {FROZEN_NMI} for {FROZEN_EPOCHS} epochs")
    measured = [r for r in [*history, record] if r.get("knn_top1") is not None and r["epoch"] >= WARMUP_EPOCHS]
    last = measured[-BELOW_FLOOR_MEASUREMENTS:]
    if (
        record.get("knn_top1") is not None
        and len(last) == BELOW_FLOOR_MEASUREMENTS
        and all(random_floor(r) is not None and r["knn_top1"] <= random_floor(r) for r in last)
    ):
        alarms.append(
            f"kNN at or below the random network's floor ({random_floor(last[-1]):.2f}) for "
            f"{BELOW_FLOOR_MEASUREMENTS} measurements running after epoch {WARMUP_EPOCHS}"
        )
    return alarms
