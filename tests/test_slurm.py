"""The submitit launcher against a real single-node Slurm (slurm/local_cluster.sh, started here if needed)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import PYTHON, REPO, TINY_PRETRAIN, read_jsonl, script_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TINY = [*TINY_PRETRAIN, "--workers", "0", "--in-memory"]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict:
    """Start (or find) the local cluster; a machine where it cannot start fails here, saying why. tests/run.sh run by a
    normal user does not start it (it needs root): these tests then skip, except under CI=true."""
    if os.environ.get("DEEPCLUSTER_SKIP_SLURM") and os.environ.get("CI") != "true":
        pytest.skip("no local Slurm (it needs root): run `bash tests/run.sh` as root, or with CI=true, to include it")
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "local_cluster.sh"), "start"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"the local Slurm cluster could not be started:\n{proc.stderr[-2000:]}")
    conf = re.search(r"export SLURM_CONF=(\S+)", proc.stdout).group(1)
    env = script_env(tmp_path_factory.mktemp("slurm-env"))
    env["SLURM_CONF"] = conf
    return env


def submit(env: dict, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(REPO / "slurm" / "submit.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sacct_state(env: dict, job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-o", "State"], env=env, capture_output=True, text=True)
    return out.stdout.strip().split()[0] if out.stdout.strip() else ""


def job_ids(stdout: str) -> list[str]:
    return re.findall(r"as job (\S+);", stdout)


def test_two_tasks_on_one_node(slurm_env, tmp_path, tiny_folder):
    out = tmp_path / "run"
    launcher = [*"--tasks-per-node 2 --cpus-per-task 1 --mem-gb 4 --job-dir".split(), str(tmp_path / "j" / "%j")]
    script = [*TINY, "--data", str(tiny_folder), "--epochs", "2", "--output-dir", str(out)]
    proc = submit(slurm_env, ["main_deepcluster.py", *launcher, "--wait", "--", *script])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(job_ids(proc.stdout)) == 1 and "finished" in proc.stdout
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == [0, 1, 2]  # 2: the final network, measured
    assert (out / "checkpoint.pth").is_file()
    logs = "".join(p.read_text() for p in (tmp_path / "j").rglob("*_log.err"))
    assert "effective batch 32 (16 x 2 processes)" in logs


def test_preempted_job_requeues_and_resumes(slurm_env, tmp_path, tiny_folder):
    import submitit

    out, jobs = tmp_path / "run", tmp_path / "jobs"
    epochs = 8
    proc = submit(
        slurm_env,
        [
            "main_deepcluster.py",
            "--cpus-per-task",
            "2",
            "--mem-gb",
            "4",
            "--timeout-min",
            "10",
            "--job-dir",
            str(jobs / "%j"),
            "--",
            *TINY,
            "--data",
            str(tiny_folder),
            "--epochs",
            str(epochs),
            "--output-dir",
            str(out),
        ],
    )
    assert proc.returncode == 0, proc.stderr
    job_id = job_ids(proc.stdout)[0]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint.pth").exists():  # written after the epoch's log line
        time.sleep(0.2)
    os.environ["SLURM_CONF"] = slurm_env["SLURM_CONF"]
    job = submitit.SlurmJob(folder=jobs / job_id, job_id=job_id)
    job._interrupt()  # what a preemption does: the signal, then submitit's checkpoint hook requeues the job
    interrupted_at = len(read_jsonl(out / "log.jsonl"))
    assert interrupted_at < epochs, "the preemption must land before the run ends"
    deadline = time.time() + 400
    state = ""
    while time.time() < deadline:
        state = sacct_state(slurm_env, job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(1)
    assert state == "COMPLETED", state
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == list(range(epochs + 1))  # each epoch once
    log_text = "".join(p.read_text() for p in (jobs / job_id).glob("*_log.*"))
    assert "resumed from" in log_text


def test_job_array_sweep(slurm_env, tmp_path, tiny_folder):
    out = tmp_path / "sweep"
    launcher = [*"--cpus-per-task 1 --mem-gb 4 --sweep lr=0.01,0.02,0.03 --job-dir".split(), str(tmp_path / "j")]
    script = [*TINY, "--data", str(tiny_folder), "--epochs", "1", "--output-dir", str(out)]
    proc = submit(slurm_env, ["main_deepcluster.py", *launcher, "--wait", "--", *script])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = job_ids(proc.stdout)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array
    for lr in ("0.01", "0.02", "0.03"):
        assert read_jsonl(out / f"lr={lr}" / "log.jsonl")[0]["epoch"] == 0
        ckpt = torch.load(out / f"lr={lr}" / "checkpoint.pth", weights_only=False)
        assert ckpt["args"]["lr"] == float(lr)  # each element trained with its own value


def test_failing_job_reports_the_remote_traceback(slurm_env, tmp_path):
    proc = submit(
        slurm_env,
        [
            "main_deepcluster.py",
            "--cpus-per-task",
            "1",
            "--mem-gb",
            "2",
            "--job-dir",
            str(tmp_path / "jobs" / "%j"),
            "--wait",
            "--",
            *TINY,
            "--data",
            str(tmp_path / "missing"),
            "--output-dir",
            str(tmp_path / "run"),
        ],
    )
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "Traceback" in proc.stderr and "does not exist" in proc.stderr


def test_launcher_rejects_bad_script_flags_before_submitting(slurm_env, tmp_path):
    proc = submit(
        slurm_env,
        [
            *"main_deepcluster.py --job-dir".split(),
            str(tmp_path / "jobs"),
            *"-- --arch nope --output-dir".split(),
            str(tmp_path / "o"),
        ],
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert not Path(tmp_path / "jobs").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "slurm" / "recipes").glob("*.sh")))
def test_recipes_parse(tmp_path, recipe):
    """Every recipe's launcher and script flags are valid (checked by --dry-run, nothing is submitted)."""
    env = script_env(tmp_path)
    env.update(
        DRY_RUN="1",
        IMAGENET=str(tmp_path),
        DATA=str(tmp_path),
        VOC2007=str(tmp_path),
        CKPT=str(tmp_path / "checkpoint.pth"),
        PATH=f"{Path(PYTHON).parent}:{env['PATH']}",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "recipes" / recipe), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "would submit" in proc.stdout
