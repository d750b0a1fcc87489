"""main_deepcluster.py end to end on tiny generated ImageFolders (real JPEGs, real faiss, real W&B offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import normalized_mutual_info_score

from tests.helpers import TINY_PRETRAIN, read_jsonl, run_script, script_env, wandb_history, wandb_run_dir
from util.data import list_images, resolve_split, subset_indices

pytestmark = pytest.mark.slow

TINY = [*TINY_PRETRAIN, "--workers", "0"]
LOG_KEYS = {
    "epoch",
    "loss",
    "nmi_prev",
    "nmi_labels",
    "empty_clusters",
    "time_extract",
    "time_cluster",
    "time_train",
    "images_per_s",
}


def pretrain(tmp_path, data, out, *extra, **kwargs):
    return run_script(
        "main_deepcluster.py", ["--data", str(data), "--output-dir", str(out), *TINY, *extra], tmp_path, **kwargs
    )


@pytest.mark.parametrize("memory", ["--in-memory", "--no-in-memory"])
def test_end_to_end_writes_checkpoint_log_assignments_and_wandb(tmp_path, tiny_folder, memory):
    out = tmp_path / "run"
    proc = pretrain(tmp_path, tiny_folder, out, "--epochs", "2", memory)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out / "log.jsonl")
    # Epochs 0 and 1 trained; record 2 measures the final network (extraction + clustering, no training).
    assert [r["epoch"] for r in records] == [0, 1, 2] and [r.get("final") for r in records] == [None, None, True]
    assert LOG_KEYS <= set(records[0])
    assert records[0]["nmi_prev"] is None and 0 <= records[1]["nmi_prev"] <= 1
    assert all(0 <= r["nmi_labels"] <= 1 for r in records)
    assert all(np.isfinite(r["loss"]) for r in records[:2]) and records[2]["loss"] is None
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet18" and len(ckpt["assignments"]) == 90
    config = yaml.safe_load((out / "config.yaml").read_text())  # the resolved arguments, the rule's choices included
    derived = ("config", "rule_departures")  # not flags: the run derives them again
    assert config == {k: list(v) if isinstance(v, tuple) else v for k, v in ckpt["args"].items() if k not in derived}
    assert proc.stderr.count("estimate on this machine:") == 1  # said once, after the first training steps
    saved = np.load(out / "assignments" / "epoch_0001.npy")
    assert saved.dtype == np.int16 and saved.shape == (90,)
    np.testing.assert_array_equal(saved, ckpt["assignments"])
    # The logged NMI is that of the saved clusters against the folder labels (3 classes x 30, in folder order).
    labels = np.repeat(np.arange(3), 30)
    for epoch in (0, 1):
        saved = np.load(out / "assignments" / f"epoch_{epoch:04d}.npy")
        assert records[epoch]["nmi_labels"] == pytest.approx(
            normalized_mutual_info_score(labels, saved, average_method="geometric"), abs=1e-12
        )
    # The offline W&B run, read back from disk, holds the same NMI and loss with the epoch as x-axis.
    history = [h for h in wandb_history(wandb_run_dir(out)) if "cluster/nmi_labels" in h]  # (images: rows apart)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for h, r in zip(history, records, strict=True):
        assert h.get("train/loss") == (None if r["loss"] is None else pytest.approx(r["loss"]))
        assert h["cluster/nmi_labels"] == pytest.approx(r["nmi_labels"])
    assert "epoch 1/2 | network after 1 epoch" in proc.stderr and "with the labels" in proc.stderr


def test_resume_with_more_epochs_continues_the_same_run(tmp_path, tiny_folder):
    out = tmp_path / "run"
    assert pretrain(tmp_path, tiny_folder, out, "--epochs", "1").returncode == 0
    run_id = torch.load(out / "checkpoint.pth", weights_only=False)["wandb_run_id"]
    proc = pretrain(tmp_path, tiny_folder, out, "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stderr
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == [0, 1, 2]
    assert torch.load(out / "checkpoint.pth", weights_only=False)["wandb_run_id"] == run_id
    again = pretrain(tmp_path, tiny_folder, out, "--epochs", "2")
    assert again.returncode == 0 and "already holds 2 epochs" in again.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--arch", "alexnet", "--sobel", "--image-size", "64"],
        ["--wandb-mode", "disabled"],
    ],
)
def test_other_archs_and_modes_run(tmp_path, tiny_folder, extra):
    out = tmp_path / "run"
    proc = pretrain(tmp_path, tiny_folder, out, "--epochs", "1", *extra)
    assert proc.returncode == 0, proc.stderr
    record = read_jsonl(out / "log.jsonl")[0]
    assert record["num_clusters"] >= 2
    assert (out / "wandb").exists() == ("disabled" not in extra)


def test_bundled_cifar10_subset(tmp_path):
    env = script_env(tmp_path)
    env["DEEPCLUSTER_CACHE"] = str(tmp_path / "cache")
    out = tmp_path / "run"
    args = [*"--data cifar10 --subset 300 --epochs 1 --k 10 --pca-dim 32 --knn-every 0 --output-dir".split(), str(out)]
    proc = run_script("main_deepcluster.py", args, tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache" / "cifar10-jpg" / "test" / "airplane").is_dir()
    # the logged NMI is that of the saved clusters against the labels of the 300 images the subset chose
    images = list_images(resolve_split("cifar10", "train", tmp_path / "cache"))
    labels = images.targets[subset_indices(len(images), 300)]
    saved = np.load(out / "assignments" / "epoch_0000.npy")
    expected = normalized_mutual_info_score(labels, saved, average_method="geometric")
    assert read_jsonl(out / "log.jsonl")[0]["nmi_labels"] == pytest.approx(expected, abs=1e-12)


def test_neck_is_trained_saved_and_resumed_exactly(tmp_path, tiny_folder):
    """--neck mlp: the neck's weights travel in the checkpoint beside the backbone's (which alone the evaluations
    read), and a run stopped after one epoch and resumed ends bit for bit where an uninterrupted run ends."""
    flags = ["--neck", "mlp", "--deterministic", "--wandb-mode", "disabled"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (proc := pretrain(tmp_path, tiny_folder, straight, "--epochs", "2", *flags)).returncode == 0, proc.stderr
    assert (proc := pretrain(tmp_path, tiny_folder, resumed, "--epochs", "1", *flags)).returncode == 0, proc.stderr
    assert (proc := pretrain(tmp_path, tiny_folder, resumed, "--epochs", "2", *flags)).returncode == 0, proc.stderr
    one, two = (torch.load(out / "checkpoint.pth", weights_only=False) for out in (straight, resumed))
    assert set(one["neck"]) == {f"{i}.{p}" for i in (0, 3) for p in ("weight", "bias")} | {
        f"{i}.{p}" for i in (1, 4) for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    for part in ("backbone", "neck"):
        for key, value in one[part].items():
            assert torch.equal(value, two[part][key]), (part, key)
    losses = [[r["loss"] for r in read_jsonl(out / "log.jsonl")] for out in (straight, resumed)]
    assert losses[0] == losses[1]


def test_the_small_image_network_resumes_exactly(tmp_path, tiny_folder):
    """The rule's network for small images (resnet9_w32 at its rate, 0.1): a run stopped after one epoch and resumed
    ends bit for bit where an uninterrupted run ends."""
    flags = ["--arch", "resnet9_w32", "--deterministic", "--wandb-mode", "disabled"]  # after TINY's --arch: wins
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (proc := pretrain(tmp_path, tiny_folder, straight, "--epochs", "2", *flags)).returncode == 0, proc.stderr
    assert (proc := pretrain(tmp_path, tiny_folder, resumed, "--epochs", "1", *flags)).returncode == 0, proc.stderr
    assert (proc := pretrain(tmp_path, tiny_folder, resumed, "--epochs", "2", *flags)).returncode == 0, proc.stderr
    one, two = (torch.load(out / "checkpoint.pth", weights_only=False) for out in (straight, resumed))
    assert one["args"]["arch"] == "resnet9_w32" and one["args"]["lr"] == 0.1  # the rule's rate for this network
    assert one["backbone"].keys() == two["backbone"].keys()
    assert all(torch.equal(value, two["backbone"][key]) for key, value in one["backbone"].items())
    losses = [[r["loss"] for r in read_jsonl(out / "log.jsonl")] for out in (straight, resumed)]
    assert losses[0] == losses[1]
