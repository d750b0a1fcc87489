"""main_deepclusterv2.py end to end: a tiny multi-crop run read back from its log, W&B files and checkpoint, the
evaluations on its checkpoint, and a restart after a kill that ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import PYTHON, REPO, read_jsonl, run_script, script_env, wandb_run_dir, wandb_summary
from util.pretrain.monitor import FLOOR_KEYS

pytestmark = pytest.mark.slow

TINY = (
    "--arch resnet18 --image-size 32 --nmb-crops 2 --size-crops 32 --min-scale-crops 0.2 --max-scale-crops 1 "
    "--feat-dim 16 --hidden-mlp 32 --nmb-prototypes 12 8 --batch-size 16 --epochs 2 --workers 0"
).split()
MULTI_CROP = "--nmb-crops 2 2 --size-crops 32 16 --min-scale-crops 0.3 0.1 --max-scale-crops 1 0.3".split()


def test_tiny_multicrop_run_logs_its_floor_and_the_evaluations_read_its_checkpoint(tmp_path, tiny_split_folder):
    out = tmp_path / "run"
    args = [
        "--data",
        str(tiny_split_folder / "train"),
        "--knn-data",
        str(tiny_split_folder / "val"),
        *TINY,
        *MULTI_CROP,
        "--blur",
        "--no-in-memory",
        "--cluster-images-every",
        "1",
        "--wandb-mode",
        "offline",
        "--output-dir",
        str(out),
    ]
    proc = run_script("main_deepclusterv2.py", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out / "log.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2] and records[-1].get("final") is True
    floors = {key: records[0][key] for key in FLOOR_KEYS}  # measured before training, carried by every record
    assert floors["knn_floor_random"] >= records[0]["knn_top1"] and all(
        r[k] == v for r in records for k, v in floors.items()
    )
    assert records[0]["nmi_prev"] is None and records[1]["nmi_prev"] is not None
    assert records[0]["clustered_images"] == 160  # the bank-filling pass wrote every image
    assert records[1]["clustered_images"] == 160 // 16 * 16  # then those of the epoch's whole batches
    assert all(np.isfinite(r["loss"]) for r in records[:2])
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert ckpt["method"] == "deepcluster-v2" and ckpt["epoch"] == 2
    assert any(note.startswith("memory bank") for note in ckpt["departures"])  # beside the weights, as in --help
    assert ckpt["bank"]["embeddings"].shape == (2, 160, 16)  # two assignment crops, dataset order
    norms = ckpt["bank"]["embeddings"].norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    saved = np.load(out / "assignments" / "epoch_0001.npy")
    np.testing.assert_array_equal(saved, ckpt["assignments"])
    summary = wandb_summary(wandb_run_dir(out))["summary"]
    assert summary["final_knn_top1"] == records[-1]["knn_top1"] and summary["knn_floor"] == floors["knn_floor"]
    assert sorted(p.name for p in (out / "clusters").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]  # head 0

    evaluated = tmp_path / "eval"
    eval_args = ["--pretrained", str(out / "checkpoint.pth"), "--data", str(tiny_split_folder), "--protocol", "knn"]
    eval_args += ["--image-size", "32", "--batch-size", "16", "--workers", "0", "--output-dir", str(evaluated)]
    proc = run_script("eval_linear.py", [*eval_args, "--baseline", "none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((evaluated / "results.json").read_text())
    one_image = 100.0 / 60  # 60 held-out images: two extractions may differ in the last float bits only
    assert abs(records[-1]["knn_top1"] - results["knn_top1"]) <= one_image


def run_tiny(data: Path, out: Path, tmp: Path, fault: str | None = None):
    args = ["--data", str(data), *TINY, "--in-memory", "--deterministic", "--wandb-mode", "disabled"]
    env = {**script_env(tmp), "OMP_NUM_THREADS": "1", **({"DEEPCLUSTER_FAULT": fault} if fault else {})}
    return run_script("main_deepclusterv2.py", [*args, "--knn-every", "0", "--output-dir", str(out)], tmp, env=env)


def test_killed_mid_step_then_restarted_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_folder):
    """Killed in epoch 1's third step (DEEPCLUSTER_FAULT, util/faults.py; v1's fault matrix covers the other kill
    points of the shared checkpoint code): the restart redoes epoch 1 from epoch 0's checkpoint, bank included."""
    fault = "mid-step@8"
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert (proc := run_tiny(tiny_folder, reference, tmp_path)).returncode == 0, proc.stderr
    killed = run_tiny(tiny_folder, resumed, tmp_path, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (proc := run_tiny(tiny_folder, resumed, tmp_path)).returncode == 0, proc.stderr
    a, b = (torch.load(p / "checkpoint.pth", weights_only=False) for p in (reference, resumed))
    for part in ("backbone", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    for key, value in a["bank"].items():
        assert torch.equal(value, b["bank"][key]), key
    np.testing.assert_array_equal(a["assignments"], b["assignments"])
    log_a, log_b = read_jsonl(reference / "log.jsonl"), read_jsonl(resumed / "log.jsonl")
    assert [r["epoch"] for r in log_b] == [0, 1, 2]
    for key in ("loss", "nmi_labels", "nmi_prev", "lr"):
        assert [r[key] for r in log_a] == [r[key] for r in log_b], key


def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path, tiny_folder):
    """The bank is saved in dataset order: a 2-process torchrun run killed after epoch 1's log line resumes on one
    process from its epoch-0 checkpoint, and epoch 1 clusters exactly the images the two processes wrote."""
    out = tmp_path / "run"
    args = [str(REPO / "main_deepclusterv2.py"), "--data", str(tiny_folder), *TINY, "--in-memory"]
    args += ["--batch-size", "8", "--knn-every", "0", "--wandb-mode", "disabled", "--output-dir", str(out)]
    env = {**script_env(tmp_path), "OMP_NUM_THREADS": "1", "DEEPCLUSTER_FAULT": "after-log@2"}
    torchrun = [str(Path(PYTHON).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    killed = subprocess.run([*torchrun, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, "the fault point was never reached"
    saved = torch.load(out / "checkpoint.pth", weights_only=False)
    assert saved["epoch"] == 1
    written = int(saved["bank"]["fresh"].sum())
    assert written == 90 // 16 * 16  # 2 processes x 5 steps x 8 images (a wrapped-around duplicate at most)
    proc = run_script("main_deepclusterv2.py", args[1:], tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out / "log.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[1]["clustered_images"] == written
