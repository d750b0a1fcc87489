"""The kNN monitor of main_deepcluster.py, --reassign and the true-labels sanity check of the training machinery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import TINY_PRETRAIN, assert_user_error, read_jsonl, run_script, script_env
from util.knn import StreamingKnn, knn_predict

TINY = [*TINY_PRETRAIN, "--workers", "0"]


def brute_force_knn(train, train_labels, test, num_classes, k, temperature):
    """Weighted kNN written out in numpy, float64: the reference for util/knn.py."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test @ train.T
    scores = np.zeros((len(test), num_classes))
    for row, sim in enumerate(sims):
        nearest = np.argsort(-sim)[:k]
        for j in nearest:
            scores[row, train_labels[j]] += np.exp(sim[j] / temperature)
    return scores


def test_streaming_knn_equals_brute_force_whatever_the_batching():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 24)), rng.normal(size=(50, 24))
    labels = rng.integers(0, 5, size=300)
    reference = brute_force_knn(train, labels, test, 5, k=20, temperature=0.07)
    train_t, labels_t = torch.from_numpy(train).float(), torch.from_numpy(labels)
    streamed = StreamingKnn(torch.from_numpy(test).float(), 5, k=20, temperature=0.07, chunk=7)
    for start in range(0, 300, 13):  # batches of 13, chunks of 7: many merges of the running top-k
        streamed.update(train_t[start : start + 13], labels_t[start : start + 13])
    at_once = knn_predict(train_t, labels_t, torch.from_numpy(test).float(), 5, k=20, temperature=0.07)
    for scores in (streamed.scores(), at_once):
        np.testing.assert_allclose(scores.numpy(), reference, rtol=1e-4)
        np.testing.assert_array_equal(scores.argmax(1).numpy(), reference.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("reassign", ["1", "2.5"])
def test_reassign_sets_the_images_trained_per_clustering(tmp_path, tiny_folder, reassign):
    out = tmp_path / "run"
    args = [*TINY, "--data", str(tiny_folder), "--epochs", "1", "--reassign", reassign, "--output-dir", str(out)]
    assert (proc := run_script("main_deepcluster.py", args, tmp_path)).returncode == 0, proc.stderr
    expected = int(round(float(reassign) * 90)) // 16 * 16  # whole batches of 16 out of reassign x 90 draws
    assert read_jsonl(out / "log.jsonl")[0]["train_images"] == expected


@pytest.mark.slow
def test_true_labels_sanity_check_lifts_knn_far_above_the_floor(tmp_path):
    """The training machinery learns: with the true labels in place of the clusters, three short epochs of ResNet-18
    on 1,000 CIFAR-10 images lift the kNN top-1 on the 10,000 test images well above the random network's. (The
    rule's resnet9_w32 at lr 0.1 and batch 64 ends below its random network here: docs/experiments.md.)"""
    env = script_env(tmp_path)
    out = tmp_path / "run"
    args = [
        *(
            "--data cifar10 --arch resnet18 --subset 1000 --labels-from dataset --epochs 3 --reassign 3 --k 10 "
            "--pca-dim 32 --batch-size 64 --knn-every 3 --tsne-every 0 --online-probe --seed 0 --wandb-mode disabled "
            "--output-dir"
        ).split(),
        str(out),
    ]
    proc = run_script("main_deepcluster.py", args, tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out / "log.jsonl")
    floor, final = records[0]["knn_top1"], records[-1]["knn_top1"]
    # more than 4 standard errors of the difference of two accuracies on the 10,000 test images (the bound for two
    # independent samples; the networks are scored on the same images, which only narrows the true spread)
    share = (floor + final) / 200
    margin = 4 * 100 * math.sqrt(2 * share * (1 - share) / 10_000)
    assert final > floor + margin, (floor, final, margin)


def test_monitor_bad_inputs(tmp_path, tiny_folder, tiny_split_folder):
    base = ["--output-dir", str(tmp_path / "o"), "--epochs", "1", *TINY]
    proc = run_script("main_deepcluster.py", ["--data", str(tiny_folder), "--knn-every", "1", *base], tmp_path)
    assert_user_error(proc, "--knn-every needs a labelled held-out split", "--knn-data")
    proc = run_script(
        "main_deepcluster.py",
        ["--data", str(tiny_split_folder / "train"), "--knn-data", str(tiny_folder), *base],
        tmp_path,
    )
    assert_user_error(proc, "other class folders")
    proc = run_script("main_deepcluster.py", [*base, "--data", str(tiny_folder), "--reassign", "0"], tmp_path)
    assert_user_error(proc, "--reassign 0.0 must be positive")
    assert not (tmp_path / "o" / "checkpoint.pth").exists()
