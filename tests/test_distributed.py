"""Two gloo processes on the CPU (torchrun) against one process: same data, same results within tolerance."""

from __future__ import annotations

import json
import re
import subprocess
import time

import numpy as np
import pytest
import torch

from tests.helpers import PYTHON, REPO, free_port, random_resnet18, read_jsonl, run_script, script_env
from util.metrics import nmi

pytestmark = pytest.mark.slow

COMMON = "--arch resnet18 --k 6 --pca-dim 16 --reassign 1 --image-size 32 --workers 0 --in-memory --epochs 2".split()
COMMON += ["--seed", "3"]


def torchrun(tmp_path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    torchrun_bin = str(__import__("pathlib").Path(PYTHON).parent / "torchrun")
    cmd = [torchrun_bin, "--standalone", "--nproc_per_node", "2", str(REPO / script), *args]
    env = script_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_match_one(tmp_path, tiny_folder):
    """1 process x batch 32 vs 2 processes x batch 16: the same images, the same augmentations and the same first
    clustering (identical features, NMI > 0.999); the epoch-0 loss agrees within 5 %. Afterwards BatchNorm
    statistics differ (16 vs 32 images per process), and on 90 images the re-clusterings drift apart, so later
    epochs are compared only for completion; test_ddp_step_equals_large_batch_step checks the gradient path exactly."""
    single, double = tmp_path / "one", tmp_path / "two"
    proc = run_script(
        "main_deepcluster.py",
        [*COMMON, "--data", str(tiny_folder), "--batch-size", "32", "--output-dir", str(single)],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    proc = torchrun(
        tmp_path,
        "main_deepcluster.py",
        [*COMMON, "--data", str(tiny_folder), "--batch-size", "16", "--output-dir", str(double)],
    )
    assert proc.returncode == 0, proc.stderr
    assert "effective batch 32 (16 x 2 processes)" in proc.stderr
    one, two = read_jsonl(single / "log.jsonl"), read_jsonl(double / "log.jsonl")
    assert [r["epoch"] for r in two] == [0, 1, 2]  # rank 0 alone writes the log, once per epoch (2: final)
    first_one = np.load(single / "assignments" / "epoch_0000.npy")
    first_two = np.load(double / "assignments" / "epoch_0000.npy")
    assert nmi(first_one, first_two) > 0.999
    assert one[0]["loss"] == pytest.approx(two[0]["loss"], rel=0.05)
    ckpt = torch.load(double / "checkpoint.pth", weights_only=False)
    assert ckpt["epoch"] == 2 and len(ckpt["assignments"]) == 90


def test_eval_scripts_run_distributed(tmp_path, tiny_split_folder):
    lin = tmp_path / "lin"
    eval_args = [
        *random_resnet18(tiny_split_folder),
        "--image-size",
        "32",
        "--workers",
        "0",
    ]
    proc = torchrun(
        tmp_path, "eval_linear.py", [*eval_args, "--epochs", "2", "--batch-size", "16", "--output-dir", str(lin)]
    )
    assert proc.returncode == 0, proc.stderr
    single = tmp_path / "lin1"
    proc1 = run_script("eval_linear.py", [*eval_args, "--protocol", "knn", "--output-dir", str(single)], tmp_path)
    assert proc1.returncode == 0, proc1.stderr
    results = json.loads((lin / "results.json").read_text())
    # kNN needs no training: gathered features must give exactly the single-process number
    alone = json.loads((single / "results.json").read_text())
    assert results["random_init_knn_top1"] == alone["random_init_knn_top1"]
    # ... and the same per-image hits, in the same order: the same bootstrap interval
    assert results["random_init_knn_top1_ci95"] == alone["random_init_knn_top1_ci95"]
    svm = tmp_path / "svm"
    proc = torchrun(
        tmp_path, "eval_svm.py", [*eval_args, "--protocol", "full", "--costs", "1", "--output-dir", str(svm)]
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((svm / "results.json").read_text())["random_init_feature5_map"] > 50


class _NoBatchNormNet(torch.nn.Module):
    """A backbone without batch-dependent layers, so one step on 2 x 8 images equals one step on 16."""

    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head_activation = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


def _train_steps(rank: int, world: int, port: int, out: str) -> None:
    import os

    import main_deepcluster as mdc
    from models.neck import Trunk
    from util.pretrain.step_log import StepLog

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net, head = _NoBatchNormNet(), torch.nn.Linear(8, 4)
    images = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(32) % 4
    per_rank = 16 // world
    batches = [(images[s : s + 16][rank::world], torch.arange(s, s + 16)[rank::world]) for s in (0, 16)]
    assert all(len(b[0]) == per_rank for b in batches)
    opts = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(head.parameters(), lr=0.1))
    model = mdc.PseudoLabelNet(Trunk(net, None), head)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    log = StepLog(every=1, epoch=0, num_steps=2, device=torch.device("cpu"), advice="lower --lr")
    mdc.train_steps(model, opts, batches, labels, amp=False, log=log)
    if rank == 0:
        torch.save({"net": net.state_dict(), "head": head.state_dict()}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


def test_ddp_step_equals_large_batch_step(tmp_path):

    import torch.multiprocessing as mp

    port = free_port()
    _train_steps(0, 1, port, str(tmp_path / "one.pth"))
    mp.spawn(_train_steps, args=(2, port, str(tmp_path / "two.pth")), nprocs=2, join=True)
    one, two = torch.load(tmp_path / "one.pth"), torch.load(tmp_path / "two.pth")
    for part in ("net", "head"):
        for key, value in one[part].items():
            assert torch.allclose(value, two[part][key], atol=1e-6), (part, key)


def test_knn_monitor_of_two_processes_equals_one(tmp_path, tiny_split_folder):
    """Each process streams its shard of the training features into its running top-k; the merged neighbours give
    the single process's kNN of the random network (epoch 0: the same weights, the same features)."""
    records = {}
    for name, world in (("one", 1), ("two", 2)):
        args = [*COMMON, "--epochs", "1", "--data", str(tiny_split_folder / "train"), "--batch-size", str(32 // world)]
        args += ["--knn-data", str(tiny_split_folder / "val"), "--output-dir", str(tmp_path / name)]
        if world == 1:
            proc = run_script("main_deepcluster.py", args, tmp_path)
        else:
            proc = torchrun(tmp_path, "main_deepcluster.py", args)
        assert proc.returncode == 0, proc.stderr
        records[name] = read_jsonl(tmp_path / name / "log.jsonl")
    one_image = 100 / 60  # 60 held-out images; batches of other sizes may move features in the last float bits
    assert abs(records["one"][0]["knn_top1"] - records["two"][0]["knn_top1"]) <= one_image
    assert records["two"][0]["knn_floor"] == records["two"][0]["knn_top1"]


def two_ranks(tmp_path, script: str, args: list[str], rank0_fault: str = "", rank1_fault: str = "") -> list[dict]:
    """Two processes started by hand, as srun without --kill-on-bad-exit would (no launcher ends the other when one
    fails); each rank's exit status, output and the second it ended."""
    port, procs, start = free_port(), [], time.monotonic()
    for rank, fault in ((0, rank0_fault), (1, rank1_fault)):
        env = script_env(tmp_path)
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.update(OMP_NUM_THREADS="1", DEEPCLUSTER_FAULT=fault)
        cmd = [PYTHON, str(REPO / script), *args]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    ended = [None, None]
    while None in ended and time.monotonic() - start < 600:
        for rank, proc in enumerate(procs):
            if ended[rank] is None and proc.poll() is not None:
                ended[rank] = time.monotonic() - start
        time.sleep(0.1)
    for proc in procs:
        proc.kill()
    return [{"status": p.wait(), "log": p.stdout.read(), "ended_s": e} for p, e in zip(procs, ended, strict=True)]


def error_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "error: " in line]
    assert lines, log[-3000:]
    return lines[-1].split("error: ", 1)[1]


def test_a_failure_on_rank_0_ends_rank_1_with_its_line(tmp_path, tiny_folder):
    """Only rank 0's checkpoint write fails (a full disk): both ranks exit 2 within seconds of each other, rank 1
    with rank 0's line, no traceback."""
    args = [*COMMON, "--data", str(tiny_folder), "--batch-size", "16", "--output-dir", str(tmp_path / "run")]
    ranks = two_ranks(tmp_path, "main_deepcluster.py", [*args, "--wandb-mode", "disabled"], rank0_fault="no-space")
    assert [r["status"] for r in ranks] == [2, 2], ranks[0]["log"][-2000:] + ranks[1]["log"][-2000:]
    assert error_line(ranks[1]["log"]) == f"rank 0: {error_line(ranks[0]['log'])}"
    assert "Traceback" not in ranks[1]["log"]
    assert abs(ranks[1]["ended_s"] - ranks[0]["ended_s"]) < 15


def test_a_hung_rank_times_out_with_a_named_line(tmp_path, tiny_folder):
    """Rank 1 hangs in its second training step: rank 0's collective gives up after --dist-timeout (3 s here) with
    one line naming itself, and rank 1 ends with that line."""
    args = [*COMMON, "--data", str(tiny_folder), "--batch-size", "16", "--dist-timeout", "0.05"]
    args += ["--wandb-mode", "disabled", "--output-dir", str(tmp_path / "run")]
    ranks = two_ranks(tmp_path, "main_deepcluster.py", args, rank1_fault="mid-step@2:stall")
    assert [r["status"] for r in ranks] == [2, 2], ranks[0]["log"][-2000:] + ranks[1]["log"][-2000:]
    line = error_line(ranks[0]["log"])
    assert re.fullmatch(
        r"rank 0: (a|an|the) .+ \(\S+\.py:\d+ \(\w+\)\) timed out after 0\.05 min .+--dist-timeout.*", line
    ), line
    assert error_line(ranks[1]["log"]) == f"rank 0: {line}"
