"""An epoch's record mirrored to W&B, shared by the pretraining scripts."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from util.tracking import Tracker

logger = logging.getLogger("deepcluster")


class PhaseTimer(dict):
    """The seconds of an epoch's phases as record keys: `with times("extract"): ...` sets times["time_extract"]."""

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self[f"time_{phase}"] = self.get(f"time_{phase}", 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.values())


def close_record(
    record: dict, times: PhaseTimer, stats: dict, floors: dict | None, world_size: int, epochs: int
) -> dict:
    """The end of an epoch's record, the same in both scripts: phase times, images trained (all processes) and their
    rate, the floors beside a kNN measurement with the gain over the floor (the higher trivial baseline), `final` for
    the measurement without training; then its console line."""
    train_images = stats["images"] * world_size  # whole batches
    record.update(times, train_images=train_images, images_per_s=train_images / max(times["time_train"], 1e-9))
    if record.get("knn_top1") is not None and floors is not None:
        record.update(floors)
        record["knn_gain"] = record["knn_top1"] - floors["knn_floor"]
    if record["loss"] is None:
        record["final"] = True
    log_epoch_line(record, epochs, tuple(key[len("time_") :] for key in times))
    return record


def network_words(record: dict) -> str:
    """Which network a record measured: the random one (epoch 0), the network after e epochs, or the final one."""
    epoch = record["epoch"]
    epochs = f"{epoch} epoch{'s' if epoch != 1 else ''}"
    if record.get("final"):
        return f"final network (after {epochs})"
    return "random network (before training)" if epoch == 0 else f"network after {epochs}"


def log_epoch_line(record: dict, epochs: int, phases: tuple[str, ...]) -> None:
    """The console line of an epoch, in its order of events: the network it measured (its kNN beside the floor and the
    gain, the online probe), that network's clusters, then what the epoch trained, then the phases' times."""
    measured = [network_words(record)]
    if record.get("knn_top1") is not None:
        measured.append(f"kNN {record['knn_top1']:.2f} % ({floor_words(record)})")
    if record.get("probe_top1") is not None:
        measured.append(f"online probe {record['probe_top1']:.2f} %")
    clusters = f"{record['num_clusters']} clusters ({record['empty_clusters']} empty)"
    if record.get("nmi_labels") is not None:
        clusters += f", NMI {record['nmi_labels']:.3f} with the labels"
    if record.get("nmi_prev") is not None:
        clusters += f", {record['nmi_prev']:.3f} with epoch {record['epoch'] - 1}'s"
    parts = [f"epoch {record['epoch']}/{epochs}", ", ".join(measured), clusters]
    if not record.get("final"):
        parts.append(f"trained: loss {record['loss']:.4f} at {record['images_per_s']:.0f} images/s")
    parts.append(", ".join(f"{phase} {record[f'time_{phase}']:.1f} s" for phase in phases))
    logger.info(" | ".join(parts))


def closing_lines(records: list[dict], output_dir: Path, data: str, offline_run: str | None) -> list[str]:
    """The run's answer after its final measurement: the final kNN beside each floor and the gain over the higher,
    the online probe, held-out k-means against the random network's, where the outputs are, the next commands."""
    final, first = records[-1], records[0]
    lines = [f"done: {network_words(final)} measured"]
    if final.get("knn_top1") is not None:
        interval = ""
        if final.get("knn_top1_ci95_low") is not None:
            interval = (
                f" (95 % bootstrap interval {final['knn_top1_ci95_low']:.2f} to {final['knn_top1_ci95_high']:.2f})"
            )
        lines.append(f"  kNN top-1 {final['knn_top1']:.2f} %{interval} on the held-out split; {floor_words(final)}")
        gain = final.get("knn_gain")
        if gain is not None:
            verdict = "above every trivial baseline" if gain > 0 else "NOT above every trivial baseline"
            lines.append(f"  {verdict}: gain {gain:+.2f} points over the higher of the random network and the pixels")
    extras = []
    if final.get("probe_top1") is not None:
        extras.append(f"online probe {final['probe_top1']:.2f} %")
    if final.get("test_kmeans_acc") is not None and first.get("test_kmeans_acc") is not None:
        extras.append(
            f"held-out k-means {final['test_kmeans_acc']:.1f} % (random network {first['test_kmeans_acc']:.1f} %)"
        )
    if extras:
        lines.append("  " + "; ".join(extras))
    found = [
        name
        for name in ("checkpoint.pth", "log.jsonl", "config.yaml", "maps", "clusters", "wandb")
        if (output_dir / name).exists()
    ]
    lines.append(f"  outputs in {output_dir}: {', '.join(found)}")
    lines.append(f"  next: python report.py {output_dir}   (tables, curves, maps, cluster evolution)")
    lines.append(
        f"        python eval_linear.py --pretrained {output_dir / 'checkpoint.pth'} --data {data}   (probes; every "
        "number with its interval, and the gains' paired on the same test images)"
    )
    if offline_run:
        lines.append(f"        wandb sync {offline_run}   (the offline W&B run, to your W&B project)")
    return lines


def floor_words(record: dict) -> str:
    """`floor 47.96 = pixels, random 39.57, gain -2.79`: the floor, which baseline it is, the other, the gain."""
    floor, random, pixels = (record.get(key) for key in ("knn_floor", "knn_floor_random", "knn_floor_pixels"))
    if floor is None:
        return "floor n/a"
    if pixels is not None and pixels >= (random if random is not None else pixels):
        words = f"floor {floor:.2f} = pixels" + (f", random network {random:.2f}" if random is not None else "")
    else:
        words = f"floor {floor:.2f} = random network" + (f", pixels {pixels:.2f}" if pixels is not None else "")
    return words + (f", gain {record['knn_gain']:+.2f}" if record.get("knn_gain") is not None else "")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def log_epoch(tracker: Tracker, record: dict, assignments: np.ndarray | None) -> None:
    """Mirror the JSON record to W&B with the epoch as x-axis, plus the cluster-size histogram."""
    groups = {"loss": "train", "lr": "train", "images_per_s": "train", "epoch_images_per_s": "train"}
    metrics = {"epoch": record["epoch"]}
    metrics["alarm/collapse"] = len(record.get("collapse") or [])
    for key, value in record.items():
        if key not in ("epoch", "collapse") and value is not None:
            prefix = groups.get(key, "time" if key.startswith("time_") else "cluster")
            prefix = "monitor" if key.startswith(("knn_", "test_kmeans_", "probe_")) else prefix
            metrics[f"{prefix}/{key}"] = value
    if assignments is not None:  # the clusters the epoch trained on
        sizes = np.bincount(assignments)
        histogram = tracker.histogram(sizes[sizes > 0])
        if histogram is not None:
            metrics["cluster/size_histogram"] = histogram
    tracker.log(metrics)
    summary = {
        "final_nmi_labels": record["nmi_labels"],
        "final_knn_top1": record.get("knn_top1"),
        "knn_floor": record.get("knn_floor"),
        "knn_floor_random": record.get("knn_floor_random"),
        "knn_floor_pixels": record.get("knn_floor_pixels"),
        "knn_gain": record.get("knn_gain"),
        "epochs_trained": record["epoch"] + (0 if record.get("final") else 1),
    }
    if record["loss"] is not None:
        summary["final_loss"] = record["loss"]
    tracker.summary({k: v for k, v in summary.items() if v is not None})
