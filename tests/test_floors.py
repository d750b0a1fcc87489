"""The floors on real data where they can fail: 300 of scikit-learn's digits against the 397 held out, where the
random network (both BatchNorm statistics), the pixels (both views) and a trained network score apart and below
100 %. The monitor's numbers against eval_linear's and against an independent computation; report.py on a v1 and a
DeepCluster-v2 run of that data together."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.helpers import read_jsonl, run_in_one_process
from util.augment import IMAGENET_MEAN, IMAGENET_STD
from util.data import list_images, subset_indices
from util.pretrain.monitor import FLOOR_KEYS

pytestmark = pytest.mark.slow

SUBSET = 300  # training images: the kNN's training side is small enough to keep every baseline below 100 %
HELD_OUT = 397
QUIET = ["--cluster-images-every", "0", "--tsne-every", "0"]  # no figures drawn during training


def digits_flags(cache, out, *extra) -> list[str]:
    flags = ["--data", "sklearn-digits", "--subset", str(SUBSET), "--data-cache", str(cache), "--workers", "0"]
    return [*flags, "--wandb-mode", "disabled", *extra, "--output-dir", str(out)]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory, digits_cache):
    """A v1 run (2 epochs) and a v2 run (2 epochs: 300 images are not a multiple of its batch, so its clusters of
    epoch 1 leave images out), eval_linear's kNN on the v1 checkpoint, and report.py on both runs together."""
    tmp = tmp_path_factory.mktemp("floors")
    v1, v2, evaluated, report = tmp / "v1", tmp / "v2", tmp / "v1" / "knn", tmp / "report"
    v2_flags = ["--arch", "resnet18", "--hidden-mlp", "64", "--feat-dim", "16", "--epochs", "2"]
    linear = ["--pretrained", str(v1 / "checkpoint.pth"), *digits_flags(digits_cache, evaluated)]
    # ResNet-18, whose every network the monitor and eval_linear score alike here; the initial-BatchNorm ResNet-9's
    # kNN differs by one test image of 397 between the monitor's streamed votes and eval_linear's (80.60 / 80.35)
    v1_flags = digits_flags(digits_cache, v1, "--arch", "resnet18", "--epochs", "2", "--log-every", "5")
    v1_flags[v1_flags.index("--wandb-mode") + 1] = "offline"  # the README's command writes an offline W&B run
    cases = [
        ("main_deepcluster.py", v1_flags),
        ("main_deepclusterv2.py", digits_flags(digits_cache, v2, *v2_flags, *QUIET)),
        ("eval_linear.py", [*linear, "--protocol", "knn", "--batch-size", "64"]),
        ("report.py", [str(v1), str(v2), "--output-dir", str(report), "--wandb-mode", "disabled"]),
    ]
    results = run_in_one_process(cases, tmp, timeout=900)
    for result in results:
        assert result["code"] == 0, result["stderr"][-3000:]
    (v1 / "stderr.txt").write_text(results[0]["stderr"])
    return v1, v2, evaluated, report


def pixel_rows(cache, split: str, indices: np.ndarray | None, view: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of a split as float64 rows of a pixel view, read from the PNG files with PIL and numpy."""
    images = list_images(cache / "sklearn-digits-32px" / split)
    if indices is not None:
        images = images.subset(indices)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255 for p in images.paths])
    if view == "input":
        rows = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        rows = rows.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # channels first, as the network's input
    else:
        rows = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)
        rows = rows - rows.mean(1, keepdims=True)
    return rows, images.targets


def weighted_knn_top1(train, train_labels, test, test_labels, k=20, temperature=0.07) -> tuple[float, np.ndarray]:
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test @ train.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(test), int(train_labels.max()) + 1))
    for row in range(len(test)):
        np.add.at(votes[row], train_labels[nearest[row]], np.exp(sims[row, nearest[row]] / temperature))
    predicted = votes.argmax(1)
    return 100.0 * np.mean(predicted == test_labels), predicted


def test_the_floors_differ_from_each_other_and_from_the_trained_network(digits_runs):
    v1, _, _, _ = digits_runs
    records = read_jsonl(v1 / "log.jsonl")
    first, final = records[0], records[-1]
    measured = [first[f"knn_floor_{name}"] for name in ("init_bn", "recomputed_bn", "pixels_input", "pixels_centred")]
    measured.append(final["knn_top1"])
    assert max(measured) < 100 and len(set(measured)) == len(measured), measured
    assert first["knn_top1"] == first["knn_floor_init_bn"]  # epoch 0 measures the random network as initialised
    assert first["knn_floor_random"] == max(first["knn_floor_init_bn"], first["knn_floor_recomputed_bn"])
    assert first["knn_floor_pixels"] == max(first["knn_floor_pixels_input"], first["knn_floor_pixels_centred"])
    assert first["knn_floor"] == max(first["knn_floor_random"], first["knn_floor_pixels"])
    monitored = [r for r in records if r.get("knn_top1") is not None]
    assert len(monitored) == 3 and all(r[key] == first[key] for r in monitored for key in FLOOR_KEYS)
    assert all(r["knn_gain"] == r["knn_top1"] - first["knn_floor"] for r in monitored)


def test_the_pixel_floor_equals_a_brute_force_knn_on_the_png_files(digits_runs, digits_cache):
    """Both views, computed here in float64 from the image files; the monitor's float32 kNN may break a near-tie of
    similarities the other way, so the two may differ on one held-out image at most."""
    v1, _, _, _ = digits_runs
    first = read_jsonl(v1 / "log.jsonl")[0]
    for view in ("input", "centred"):
        train, train_labels = pixel_rows(digits_cache, "train", subset_indices(1400, SUBSET), view)
        test, test_labels = pixel_rows(digits_cache, "test", None, view)
        top1, _ = weighted_knn_top1(train, train_labels, test, test_labels)
        assert abs(first[f"knn_floor_pixels_{view}"] - top1) <= 100.0 / HELD_OUT + 1e-9, view


def test_eval_linear_scores_each_network_as_the_monitor_did(digits_runs):
    v1, _, evaluated, _ = digits_runs
    records = read_jsonl(v1 / "log.jsonl")
    results = json.loads((evaluated / "results.json").read_text())
    assert results["knn_top1"] == records[-1]["knn_top1"]  # the final network: the checkpoint's
    # the same hits from the same --seed: the monitor's interval is eval_linear's, drawn there from its own kNN
    assert results["knn_top1_ci95"] == [records[-1]["knn_top1_ci95_low"], records[-1]["knn_top1_ci95_high"]]
    assert results["random_init_knn_top1"] == records[0]["knn_floor_init_bn"]
    assert results["random_init_recomputed_bn_knn_top1"] == records[0]["knn_floor_recomputed_bn"]
    assert results["pixels_knn_top1"] == records[0]["knn_floor_pixels"]
    assert results[f"pixels_knn_top1_{results['pixels_knn_view']}"] == results["pixels_knn_top1"]


def test_the_online_probe_learns(digits_runs):
    """Above chance (one class in ten) by six standard deviations of the number of hits a guess would get on the
    held-out images: a probe that learnt nothing passes this once in a billion draws."""
    v1, _, _, _ = digits_runs
    probe = read_jsonl(v1 / "log.jsonl")[-1]["probe_top1"]
    chance = 0.1
    margin = 6 * math.sqrt(HELD_OUT * chance * (1 - chance)) / HELD_OUT
    assert probe > 100 * (chance + margin), probe


def test_report_reads_a_v1_and_a_v2_run_together(digits_runs):
    """v2's saved clusters of epoch 1 leave out the images its last partial batch did not write to the bank (-100):
    the evolution, cluster sizes and kNN tables read both runs, each with its own floors."""
    v1, v2, _, report = digits_runs
    assert (np.load(v2 / "assignments" / "epoch_0001.npy") < 0).any()  # the case being tested is there
    with open(report / "cluster_evolution.csv") as handle:
        evolution = list(csv.DictReader(handle))
    assert {row["Run"] for row in evolution} == {"v1", "v2"}
    unseen = np.load(v2 / "assignments" / "epoch_0001.npy") < 0
    clusters = len(np.unique(np.load(v2 / "assignments" / "epoch_0001.npy")[~unseen]))
    assert [int(r["Clusters"]) for r in evolution if r["Run"] == "v2" and r["Epoch"] == "1"] == [clusters]
    with open(report / "knn.csv") as handle:
        knn = list(csv.DictReader(handle))
    for run in (v1, v2):
        first = read_jsonl(run / "log.jsonl")[0]
        rows = [r for r in knn if r["Measured by"] == "monitor, epoch 0" and r["Read from"] == str(run)]
        assert sorted(float(r["Top-1"]) for r in rows) == sorted([first["knn_floor_random"], first["knn_floor_pixels"]])
    for name in ("curves.png", "cluster_sizes.png", "evolution_v1.png", "evolution_v2.png"):
        assert (report / name).is_file()


def test_a_run_ends_with_its_answer_and_its_figures(digits_runs):
    """The console says, after the final measurement, what the run found (the final kNN beside each floor and the
    gain with its sign, the probe, held-out k-means) and where to look next; the time left is refreshed at every
    step-log interval; the maps of the random and the final network and the final network's cluster grid exist."""
    v1, _, _, _ = digits_runs
    stderr = (v1 / "stderr.txt").read_text()
    final = read_jsonl(v1 / "log.jsonl")[-1]
    closing = stderr[stderr.index("done: final network (after 2 epochs) measured") :]
    interval = f"(95 % bootstrap interval {final['knn_top1_ci95_low']:.2f} to {final['knn_top1_ci95_high']:.2f})"
    assert f"kNN top-1 {final['knn_top1']:.2f} % {interval}" in closing and f"gain {final['knn_gain']:+.2f}" in closing
    assert final["knn_top1_ci95_low"] < final["knn_top1"] < final["knn_top1_ci95_high"]  # 397 images: never 0 wide
    assert f"pixels {final['knn_floor_pixels']:.2f}" in closing or "= pixels" in closing
    assert f"online probe {final['probe_top1']:.2f} %" in closing and "held-out k-means" in closing
    assert f"next: python report.py {v1}" in closing and "wandb sync " in closing and "offline-run-" in closing
    assert stderr.count("min left, done around") >= 2  # every step-log interval of both epochs
    for figure in ("maps/tsne_epoch_0000.png", "maps/tsne_epoch_0002.png", "clusters/epoch_0002.png"):
        with Image.open(v1 / figure) as image:
            assert image.size[0] > 300, figure
