"""User mistakes that need a run to get somewhere first (a NaN loss mid-training, a checkpoint of another
architecture, an unreadable image in a DataLoader worker): one clear line, exit code 2, nothing overwritten. The
mistakes caught before any work are in test_bad_input_matrix.py."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.helpers import TINY_PRETRAIN, assert_user_error, make_image_folder, read_jsonl, run_script

pytestmark = pytest.mark.slow

TINY = [*TINY_PRETRAIN, "--workers", "0", "--epochs", "1"]


def pretrain(tmp_path, *args):
    return run_script("main_deepcluster.py", [*TINY, *args], tmp_path)


@pytest.mark.parametrize("memory", ["--in-memory", "--no-in-memory"])
def test_unreadable_image_is_named(tmp_path, memory):
    data = make_image_folder(tmp_path / "data", num_classes=3, per_class=30)
    bad = data / "class_01" / "0003.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    proc = pretrain(tmp_path, "--data", str(data), "--output-dir", str(tmp_path / "o"), memory)
    assert_user_error(proc, "cannot decode image", str(bad))


def test_checkpoint_of_another_arch_is_refused_and_kept(tiny_folder, tmp_path):
    out = tmp_path / "o"
    assert pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(out)).returncode == 0
    before = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()
    log_before = (out / "log.jsonl").read_text()
    proc = pretrain(
        tmp_path, "--data", str(tiny_folder), "--output-dir", str(out), "--arch", "resnet50", "--epochs", "2"
    )
    assert_user_error(proc, "--arch resnet18 (now resnet50)", "new --output-dir")
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == before
    assert (out / "log.jsonl").read_text() == log_before
    # --resume with a checkpoint of another arch, into a fresh folder
    proc = pretrain(
        tmp_path,
        "--data",
        str(tiny_folder),
        "--output-dir",
        str(tmp_path / "o2"),
        "--arch",
        "resnet50",
        "--resume",
        str(out / "checkpoint.pth"),
    )
    assert_user_error(proc, "--arch resnet18 (now resnet50)")


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_folder, tmp_path):
    out = tmp_path / "o"
    assert pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(out)).returncode == 0
    before = (out / "checkpoint.pth").read_bytes()
    proc = pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(out), "--epochs", "3", "--lr", "1e30")
    assert_user_error(proc, "lower --lr")
    assert (out / "checkpoint.pth").read_bytes() == before
    # epoch 0 and the final measurement of the checkpoint's (unchanged) weights; nothing of the failed epoch
    assert [(r["epoch"], r.get("final")) for r in read_jsonl(out / "log.jsonl")] == [(0, None), (1, True)]


def test_output_dir_not_writable(tiny_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(blocker / "run"))
    assert_user_error(proc, "not writable")
    proc = pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(blocker))
    assert_user_error(proc, "is a file")


def test_wandb_online_without_credentials_falls_back_to_offline(tiny_folder, tmp_path):
    out = tmp_path / "o"
    proc = pretrain(tmp_path, "--data", str(tiny_folder), "--output-dir", str(out), "--wandb-mode", "online")
    assert proc.returncode == 0, proc.stderr
    assert "logging offline instead" in proc.stderr
    assert list((out / "wandb").glob("offline-run-*"))
    shutil.rmtree(out)


def test_arch_too_deep_for_the_image_size_names_the_size_it_needs(tiny_folder, tiny_split_folder, tmp_path):
    out = tmp_path / "o"
    proc = pretrain(
        tmp_path, "--data", str(tiny_folder), "--output-dir", str(out), "--arch", "alexnet", "--image-size", "32"
    )
    assert_user_error(proc, "--arch alexnet cannot run on 32 px images", "--image-size 63")
    assert not (out / "checkpoint.pth").exists()
    args = ["--pretrained", "random", "--arch", "alexnet", "--data", str(tiny_split_folder), "--image-size", "32"]
    proc = run_script("eval_linear.py", [*args, "--output-dir", str(out)], tmp_path)
    assert proc.returncode == 2 and "--image-size 63" in proc.stderr


EVALUATIONS = [
    ("eval_linear.py", ["--protocol", "knn"]),
    ("eval_svm.py", ["--protocol", "full", "--costs", "1", "--layers", "feature5"]),
    ("eval_semisup.py", ["--percent", "50", "--epochs", "1", "--batch-size", "16"]),
]


@pytest.mark.parametrize("memory", ["--in-memory", "--no-in-memory"])
@pytest.mark.parametrize("script,extra", EVALUATIONS, ids=[s for s, _ in EVALUATIONS])
def test_a_jpeg_cut_off_mid_image_is_named_by_every_evaluation(tiny_split_folder, tmp_path, script, extra, memory):
    data = tmp_path / "data"
    shutil.copytree(tiny_split_folder, data)
    bad = sorted((data / "val").rglob("*.jpg"))[3]
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # a download or copy cut off: the header reads, the pixels end early
    args = ["--pretrained", "random", "--arch", "resnet18", "--data", str(data), "--image-size", "32", "--workers", "0"]
    proc = run_script(script, [*args, *extra, memory, "--output-dir", str(tmp_path / "out")], tmp_path)
    assert_user_error(proc, "cannot decode image", str(bad))
