"""Collapse alarms: each condition forced on records, and a run that stops at one keeping the checkpoint before."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.helpers import TINY_PRETRAIN, assert_user_error, read_jsonl, run_script
from util.pretrain.alarms import BELOW_FLOOR_MEASUREMENTS, FROZEN_EPOCHS, WARMUP_EPOCHS, collapse_alarms, size_entropy

HEALTHY = {"cluster_size_entropy": 0.95, "empty_clusters": 0, "reseeded_clusters": 0, "num_clusters": 100}


def records(count: int, **changes) -> list[dict]:
    return [{**HEALTHY, "epoch": epoch, "nmi_prev": 0.6, **changes} for epoch in range(count)]


def test_size_entropy_against_its_definition():
    assert size_entropy(np.full(8, 5)) == pytest.approx(1.0)
    assert size_entropy(np.array([40, 0, 0, 0])) == 0.0
    sizes = np.array([10, 30, 60, 0])
    p = sizes[sizes > 0] / 100
    assert size_entropy(sizes) == pytest.approx(-(p * np.log(p)).sum() / np.log(4))


def test_a_healthy_run_raises_no_alarm():
    history = records(10, knn_top1=50.0, knn_floor=40.0)
    assert all(collapse_alarms(history[:i], history[i], 0.5) == [] for i in range(10))


def test_uneven_cluster_sizes():
    (alarm,) = collapse_alarms(records(2), {**records(3)[2], "cluster_size_entropy": 0.3}, 0.5)
    assert alarm.startswith("cluster sizes far from uniform: normalised entropy 0.300 < 0.5")


def test_empty_clusters_jumping():
    history = records(2, empty_clusters=5)
    (alarm,) = collapse_alarms(history, {**records(3)[2], "empty_clusters": 30, "num_clusters": 70}, 0.5)
    assert alarm == "30 of 100 clusters empty or re-seeded (the epoch before: 5)"
    steady = records(3, empty_clusters=30, num_clusters=70)  # many empty, but not jumping
    assert collapse_alarms(steady[:2], steady[2], 0.5) == []


@pytest.mark.parametrize("script", ["main_deepcluster", "main_deepclusterv2"])
def test_the_empty_cluster_alarm_fires_above_a_quarter_of_k_in_both_scripts(script):
    """Each script's own cluster metrics of k = 8 clusters with 2 empty (a quarter: no alarm) and 3 empty (above a
    quarter: alarm); num_clusters counts the non-empty clusters in both."""
    import importlib

    import torch

    from util.pretrain.clustering import ClusteringResult
    from util.pretrain.spherical import SphericalResult

    module = importlib.import_module(script)
    targets = np.arange(64) % 4

    def metrics(empty: int) -> dict:
        assignments = np.arange(64) % (8 - empty)  # clusters 8 - empty .. 7 hold no image
        if script == "main_deepcluster":
            result = ClusteringResult(assignments, 8, empty, 0, 0.0)
            return module.cluster_metrics(result, None, targets)
        counts = torch.bincount(torch.from_numpy(assignments), minlength=8)
        result = SphericalResult(torch.zeros(8, 4), torch.from_numpy(assignments), counts)
        return module.cluster_metrics([result], None, targets)

    calm, collapsing = metrics(2), metrics(3)
    assert (calm["num_clusters"], calm["empty_clusters"]) == (6, 2)
    assert (collapsing["num_clusters"], collapsing["empty_clusters"]) == (5, 3)
    history = [{**metrics(0), "epoch": 0}]
    assert collapse_alarms(history, {**calm, "epoch": 1}, 0.0) == []
    assert collapse_alarms(history, {**collapsing, "epoch": 1}, 0.0) == [
        "3 of 8 clusters empty or re-seeded (the epoch before: 0)"
    ]


def test_frozen_clusters():
    history = records(FROZEN_EPOCHS, nmi_prev=0.995)
    assert collapse_alarms(history[:-1], history[-1], 0.5)[0].startswith("clusters frozen")
    history[0]["nmi_prev"] = 0.98
    assert collapse_alarms(history[:-1], history[-1], 0.5) == []


def test_knn_at_the_floor_after_the_warmup():
    count = WARMUP_EPOCHS + BELOW_FLOOR_MEASUREMENTS
    history = records(count, knn_top1=40.0, knn_floor=40.0)
    assert collapse_alarms(history[:-1], history[-1], 0.5)[0].startswith("kNN at or below the random network's floor")
    early = records(BELOW_FLOOR_MEASUREMENTS + 1, knn_top1=30.0, knn_floor=40.0)  # all inside the warm-up
    assert collapse_alarms(early[:-1], early[-1], 0.5) == []
    history[-2]["knn_top1"] = 40.5  # one measurement above: not running
    assert collapse_alarms(history[:-1], history[-1], 0.5) == []


def test_stop_on_collapse_keeps_the_network_that_raised_the_alarm(tmp_path, tiny_folder):
    """The record of epoch 1 measures the network after one epoch (the checkpoint on disk); its alarm stops the run
    before the training of epoch 1 is saved."""
    out = tmp_path / "run"
    args = [*TINY_PRETRAIN, "--workers", "0", "--data", str(tiny_folder), "--output-dir", str(out)]
    args += ["--wandb-mode", "offline", "--knn-every", "0"]
    first = run_script("main_deepcluster.py", [*args, "--epochs", "1"], tmp_path)
    assert first.returncode == 0, first.stderr
    kept = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()
    forced = [*args, "--epochs", "3", "--collapse-entropy", "1.01", "--stop-on-collapse"]  # every epoch alarms
    proc = run_script("main_deepcluster.py", forced, tmp_path)
    assert_user_error(
        proc, "stopped at a collapse alarm of epoch 1", "keeps the network that raised it (after 1 epochs)"
    )
    assert "collapse alarm at epoch 1: cluster sizes far from uniform" in proc.stderr
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == kept
    last = read_jsonl(out / "log.jsonl")[-1]
    assert last["epoch"] == 1 and last["collapse"][0].startswith("cluster sizes far from uniform")
