"""eval_semisup.py: labelled subsets, fine-tuning with the random-init row, keyed state, exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import eval_semisup
from models import build_model
from tests.helpers import random_resnet18, run_script, script_env, wandb_run_dir, wandb_summary
from util.augment import eval_transform
from util.data import list_images, load_image
from util.errors import UserError
from util.eval.semisup import percent_subset, read_subset_file, subset_listing

TINY = ["--arch", "resnet18", "--batch-size", "16", "--epochs", "2", "--workers", "0", "--image-size", "32"]


def test_percent_subset_is_per_class_and_deterministic(tiny_split_folder):
    images = list_images(tiny_split_folder / "train")  # 4 classes x 40
    chosen = percent_subset(images, 12.5, seed=0)
    assert np.bincount(images.targets[chosen]).tolist() == [math.ceil(40 * 0.125)] * 4
    np.testing.assert_array_equal(chosen, percent_subset(images, 12.5, seed=0))
    assert not np.array_equal(chosen, percent_subset(images, 12.5, seed=1))
    assert np.bincount(images.targets[percent_subset(images, 0.1, seed=0)]).tolist() == [1] * 4  # at least one
    with pytest.raises(UserError, match="--percent"):
        percent_subset(images, 0, seed=0)


def test_subset_files_in_both_published_formats(tiny_split_folder, tmp_path):
    images = list_images(tiny_split_folder / "train")
    chosen = percent_subset(images, 25, seed=0)
    listing = tmp_path / "ours.txt"
    listing.write_text(subset_listing(images, chosen))
    np.testing.assert_array_equal(read_subset_file(images, listing), chosen)
    # mmselfsup: "class/file label"; SimCLR: bare file names (unique in ImageNet; here the first of each name)
    mm = tmp_path / "mm.txt"
    mm.write_text("".join(f"{line} 0\n" for line in listing.read_text().split()))
    np.testing.assert_array_equal(read_subset_file(images, mm), chosen)
    bare = tmp_path / "bare.txt"
    bare.write_text("class_00/0003.jpg\n0005.jpg\n")
    first_named = [i for i, p in enumerate(images.paths) if p.endswith("/0005.jpg")][0]
    assert set(read_subset_file(images, bare)) == {
        images.paths.index(str(images.root / "class_00/0003.jpg")),
        first_named,
    }
    missing = tmp_path / "missing.txt"
    missing.write_text("class_09/0001.jpg\n")
    with pytest.raises(UserError, match="not under"):
        read_subset_file(images, missing)


@torch.no_grad()
def independent_top1(weights_path, val_root, size=32):
    """Top-1 bounds of a saved fine-tuned network over the val folder, image by image in float64 with torchvision's
    transforms: (low, high), where images whose two best logits are within 1e-3 may count either way (float32
    batched arithmetic may break such a tie differently)."""
    saved = torch.load(weights_path, weights_only=False)
    model = eval_semisup.FineTuned(build_model(saved["arch"], saved["sobel"]), 4)
    model.load_state_dict(saved["model"])
    model = model.double().eval()
    images = list_images(val_root)
    transform = eval_transform(size)
    certain, tied = 0, 0
    for path, target in zip(images.paths, images.targets, strict=True):
        logits = model(transform(load_image(path))[None].double())[0]
        best = logits.topk(2).values
        if best[0] - best[1] < 1e-3:
            tied += 1
        else:
            certain += int(logits.argmax().item() == target)
    return 100.0 * certain / len(images), 100.0 * (certain + tied) / len(images)


def test_semisup_end_to_end_with_baseline_reuse_and_keys(tiny_split_folder, tmp_path):
    out = tmp_path / "semi"
    base = ["--pretrained", "random", "--data", str(tiny_split_folder), "--percent", "50", *TINY]
    proc = run_script("eval_semisup.py", [*base, "--output-dir", str(out), "--baseline", "none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["identities"]) == {"random_init"}
    assert results["labelled_images"] == 80 and len((out / "subset.txt").read_text().split()) == 80
    assert results["hyperparameters"]["wd"] == 1e-4 and results["preset"] == "mmselfsup"  # 50 %: the 10 % regime
    assert any("mmselfsup" in note for note in results["protocol_notes"])
    # the reported number (the last epoch) is the saved network's accuracy, computed independently
    low, high = independent_top1(results["random_init_finetuned_weights"], tiny_split_folder / "val")
    assert low - 1e-9 <= results["random_init_top1"] <= high + 1e-9
    summary = wandb_summary(wandb_run_dir(out))["summary"]
    assert summary["random_init_top1"] == results["random_init_top1"]
    # the same command: reused, nothing trained; another lr: a new task, trained
    again = run_script("eval_semisup.py", [*base, "--output-dir", str(out), "--baseline", "none"], tmp_path)
    assert again.returncode == 0 and "reusing results" in again.stderr and "epoch 0/2" not in again.stderr
    state = torch.load(out / "semisup_state.pth", weights_only=False)  # the hits are the last epoch's: the number
    (task,) = state["tasks"].values()
    for key in ("top1", "top5"):
        hits = task["results"]["per_image"]["hits"][key]
        assert 100.0 * float(np.float32(hits.sum()) / np.float32(hits.size)) == results[f"random_init_{key}"]
    reused = json.loads((out / "results.json").read_text())  # the reused task kept its per-image hits
    assert reused["random_init_top1_ci95"] == results["random_init_top1_ci95"] and "top1_gain" not in reused
    assert summary["random_init_top1_ci95_low"] == results["random_init_top1_ci95"][0]
    other = run_script(
        "eval_semisup.py", [*base, "--output-dir", str(out), "--baseline", "none", "--lr", "0.01"], tmp_path
    )
    assert other.returncode == 0 and "epoch 0/2" in other.stderr
    # a subset file that lists the same images is the same task
    listed = ["--subset-file", str(out / "subset.txt")]
    base_file = [a for a in base if a not in ("--percent", "50")] + listed
    same = run_script("eval_semisup.py", [*base_file, "--output-dir", str(out), "--baseline", "none"], tmp_path)
    assert same.returncode == 0 and "reusing results" in same.stderr and "epoch 0/2" not in same.stderr
    assert json.loads((out / "results.json").read_text())["labelled_images"] == 80
    # a mistake on a finished folder: one line, and the subset list its results name is left as it was
    listed_before = (out / "subset.txt").read_bytes()
    bad = run_script("eval_semisup.py", [*base, "--percent", "1", "--output-dir", str(out)], tmp_path)
    assert bad.returncode == 2 and "fewer than --batch-size" in bad.stderr
    assert (out / "subset.txt").read_bytes() == listed_before


def test_pretrained_beside_random_init_and_bad_inputs(tiny_split_folder, tmp_path):
    torch.manual_seed(5)
    ckpt = tmp_path / "ckpt.pth"
    model = build_model("resnet18", False)
    torch.save({"backbone": model.state_dict(), "arch": "resnet18", "sobel": False}, ckpt)
    out = tmp_path / "semi"
    args = ["--pretrained", str(ckpt), "--data", str(tiny_split_folder), "--percent", "25", *TINY]
    proc = run_script("eval_semisup.py", [*args, "--output-dir", str(out), "--epochs", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert {"top1", "random_init_top1"} <= set(results)
    for key in ("top1", "top5"):  # the paired gain over the random network, with its bootstrap interval
        assert results[f"{key}_gain"] == results[key] - results[f"random_init_{key}"]
        low, high = results[f"{key}_gain_ci95"]
        assert -100 <= low <= high <= 100
    assert "gain over random init" in proc.stderr and results["bootstrap"]["unit"] == "test image"
    assert results["identities"]["pretrained"]["sha256"] != results["identities"]["random_init"]["sha256"]
    for extra, words in (
        (["--percent", "1", "--batch-size", "64"], "fewer than --batch-size"),
        (["--subset-file", str(tmp_path / "none.txt")], "does not exist"),
    ):
        flags = [a for a in args if a not in ("--percent", "25")] + extra
        bad = run_script("eval_semisup.py", [*flags, "--output-dir", str(tmp_path / "bad")], tmp_path)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_interrupted_fine_tuning_resumes_exactly(tiny_split_folder, tmp_path, monkeypatch):
    """Killed after epoch 1 of 3, then rerun: the same final weights and numbers as an uninterrupted run."""
    monkeypatch.setattr("os.environ", script_env(tmp_path) | {"WANDB_MODE": "disabled"})
    parser = eval_semisup.get_args_parser()
    common = [
        "--pretrained",
        "random",
        "--data",
        str(tiny_split_folder),
        "--percent",
        "50",
        *TINY,
        "--epochs",
        "3",
        "--baseline",
        "none",
        "--deterministic",
        "--wandb-mode",
        "disabled",
    ]
    eval_semisup.main(parser.parse_args([*common, "--output-dir", str(tmp_path / "straight")]))
    calls = {"n": 0}
    top1_top5 = eval_semisup.top1_top5

    def dies_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return top1_top5(*a, **k)

    monkeypatch.setattr(eval_semisup, "top1_top5", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        eval_semisup.main(parser.parse_args([*common, "--output-dir", str(tmp_path / "killed")]))
    monkeypatch.setattr(eval_semisup, "top1_top5", top1_top5)
    eval_semisup.main(parser.parse_args([*common, "--output-dir", str(tmp_path / "killed")]))
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert resumed["random_init_top1"] == straight["random_init_top1"]
    a = torch.load(straight["random_init_finetuned_weights"], weights_only=False)
    b = torch.load(resumed["random_init_finetuned_weights"], weights_only=False)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_the_semisup_grid_is_one_sweep(tiny_split_folder, tmp_path):
    """mmselfsup's grid, lr x head multiplier, as one slurm/submit.py call: every combination, its own folder."""
    args = [
        "slurm/submit.py",
        "eval_semisup.py",
        "--dry-run",
        "--sweep",
        "lr=0.001,0.01,0.1",
        "--sweep",
        "head_lr_mult=1,10,100",
        "--",
        *random_resnet18(tiny_split_folder),
        "--percent",
        "10",
        "--output-dir",
        str(tmp_path / "grid"),
    ]
    proc = run_script(args[0], args[1:], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 9
    for lr in ("0.001", "0.01", "0.1"):
        for mult in ("1", "10", "100"):
            folder = tmp_path / "grid" / f"lr={lr}+head_lr_mult={mult}"
            assert sum(f"--lr {lr} --head-lr-mult {mult} --output-dir {folder}" in line for line in lines) == 1
