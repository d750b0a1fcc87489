"""The fault matrix: a run killed at a named point (util/faults.py) or at a random moment, then restarted with the
same command, ends bit for bit where an uninterrupted run ends (CPU, --deterministic); a checkpoint write that fails
(a full disk, injected) is one line, exit 2, and leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import PYTHON, REPO, TINY_PRETRAIN, read_jsonl, script_env

pytestmark = pytest.mark.slow

TINY = [*TINY_PRETRAIN, *"--epochs 2 --deterministic --wandb-mode disabled".split()]
VARIANTS = {  # 90 images, 5 steps an epoch
    "dataloader": ["--no-in-memory", "--workers", "2"],
    "in-memory": ["--in-memory", "--workers", "0"],
    "torch-kmeans": ["--in-memory", "--workers", "0", "--kmeans-backend", "torch"],
    "pic": ["--in-memory", "--workers", "0", "--clustering", "pic"],
    "torchrun": ["--in-memory", "--workers", "0", "--batch-size", "8", "--kmeans-backend", "torch"],  # 2 x 8
}
_REFERENCES: dict[str, Path] = {}


def command(variant: str, data: Path, out: Path) -> list[str]:
    script = [
        str(REPO / "main_deepcluster.py"),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        *TINY,
        *VARIANTS[variant],
    ]
    if variant == "torchrun":
        return [str(Path(PYTHON).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", *script]
    return [PYTHON, *script]


def run(variant: str, data: Path, out: Path, tmp: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = script_env(tmp)
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["DEEPCLUSTER_FAULT"] = fault
    return subprocess.run(command(variant, data, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def reference(variant: str, data: Path, tmp_factory) -> Path:
    """The uninterrupted run of a variant, made once per session."""
    if variant not in _REFERENCES:
        out = tmp_factory.mktemp(f"reference-{variant}") / "run"
        proc = run(variant, data, out, out.parent)
        assert proc.returncode == 0, proc.stderr
        _REFERENCES[variant] = out
    return _REFERENCES[variant]


def assert_same_run(ref: Path, resumed: Path) -> None:
    a, b = (torch.load(p / "checkpoint.pth", weights_only=False) for p in (ref, resumed))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][key]), key
    np.testing.assert_array_equal(a["assignments"], b["assignments"])
    log_a, log_b = read_jsonl(ref / "log.jsonl"), read_jsonl(resumed / "log.jsonl")
    assert [r["epoch"] for r in log_b] == [0, 1, 2]  # every epoch exactly once, the final measurement last
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["nmi_labels"] for r in log_a] == [r["nmi_labels"] for r in log_b]


@pytest.mark.parametrize(
    ("variant", "fault"),
    [
        ("dataloader", "mid-step@8"),  # epoch 1, third step: resumes from epoch 0's checkpoint
        ("in-memory", "after-log@1"),  # epoch 0 logged, its checkpoint not written: epoch 0 is redone
        ("torch-kmeans", "checkpoint-write@2"),  # inside the atomic write of epoch 1's checkpoint
        ("pic", "mid-step@3"),  # before any checkpoint: starts again from scratch
        ("torchrun", "after-log@2"),  # rank 0 dies, torchrun stops rank 1; k-means on both ranks' shards
    ],
)
def test_killed_at_a_named_point_then_restarted_ends_where_an_uninterrupted_run_ends(
    tmp_path, tiny_folder, tmp_path_factory, variant, fault
):
    ref = reference(variant, tiny_folder, tmp_path_factory)
    out = tmp_path / "run"
    killed = run(variant, tiny_folder, out, tmp_path, fault)
    assert killed.returncode != 0, "the fault point was never reached"
    if variant != "torchrun":
        assert killed.returncode == -signal.SIGKILL
    if fault.startswith("checkpoint-write"):
        assert [p.name for p in out.glob(".checkpoint.pth.*")], "killed inside the write: its temporary file is left"
    resumed = run(variant, tiny_folder, out, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, out)
    assert not [p.name for p in out.rglob(".*")], "temporary files of a killed write are left behind"


def test_killed_at_a_random_moment_then_restarted_ends_where_an_uninterrupted_run_ends(
    tmp_path, tiny_folder, tmp_path_factory
):
    ref = reference("in-memory", tiny_folder, tmp_path_factory)
    out = tmp_path / "run"
    env = script_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        command("in-memory", tiny_folder, out), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint.pth").exists():
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng().uniform(0.0, 1.0)))  # somewhere in epoch 1
    assert proc.poll() is None, "the run ended before the kill: nothing was tested"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run("in-memory", tiny_folder, out, tmp_path).returncode == 0
    assert_same_run(ref, out)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(tmp_path, tiny_folder, tmp_path_factory):
    ref = reference("in-memory", tiny_folder, tmp_path_factory)
    out = tmp_path / "run"
    proc = run("in-memory", tiny_folder, out, tmp_path, "no-space@2")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr
    assert "the previous checkpoint.pth is kept and loadable" in errors[0] and "Traceback" not in proc.stderr
    kept = torch.load(out / "checkpoint.pth", weights_only=False)
    assert kept["epoch"] == 1  # epoch 0's checkpoint, intact
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint.pth.")]  # no temp file left behind
    assert run("in-memory", tiny_folder, out, tmp_path).returncode == 0
    assert_same_run(ref, out)
