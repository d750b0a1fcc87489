"""The submitit launcher against a real single-node Slurm (slurm/local_cluster.sh, started here if needed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import PYTHON, REPO, TINY_PRETRAIN, read_jsonl, run_script, script_env

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


@pytest.mark.parametrize("how", ["submitit", "scontrol"])
def test_preempted_job_requeues_and_resumes(slurm_env, tmp_path, tiny_folder, how):
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
    if how == "submitit":
        job._interrupt()  # what a preemption does: the signal, then submitit's checkpoint hook requeues the job
    else:  # what an administrator or a preempting scheduler configured to requeue does
        assert subprocess.run(["scontrol", "requeue", job_id], env=slurm_env).returncode == 0
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


FAILING_TASK = [
    ("main_deepcluster.py", [*TINY, "--epochs", "2"], "tiny_folder"),
    (
        "main_deepclusterv2.py",
        [
            "--arch",
            "resnet18",
            "--image-size",
            "32",
            "--in-memory",
            "--workers",
            "0",
            "--nmb-crops",
            "2",
            "--size-crops",
            "32",
            "--feat-dim",
            "16",
            "--hidden-mlp",
            "32",
            "--nmb-prototypes",
            "12",
            "--batch-size",
            "8",
            "--epochs",
            "2",
        ],
        "tiny_folder",
    ),
    (
        "eval_linear.py",
        [
            "--pretrained",
            "random",
            "--arch",
            "resnet18",
            "--image-size",
            "32",
            "--workers",
            "0",
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ],
        "tiny_split_folder",
    ),
]


@pytest.mark.parametrize("script,args,data", FAILING_TASK, ids=[s for s, _, _ in FAILING_TASK])
def test_a_failing_task_ends_every_task(slurm_env, tmp_path, request, script, args, data):
    """A 2-task srun job told not to kill the other tasks (--kill-on-bad-exit=0), where only task 0's checkpoint
    write fails (a full disk): both tasks exit 2 within seconds of each other, task 1 with task 0's line."""
    wrapper = (
        'if [ "$SLURM_PROCID" = 0 ]; then export DEEPCLUSTER_FAULT=no-space; fi; "$@" > "$LOGS/task$SLURM_PROCID.log" '
        '2>&1; echo "task $SLURM_PROCID exit $? at $(date +%s.%N)"'
    )
    env = {**slurm_env, "LOGS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    data_args = ["--data", str(request.getfixturevalue(data)), "--output-dir", str(tmp_path / "out")]
    cmd = ["srun", "--ntasks", "2", "--cpus-per-task", "1", "--mem", "4G", "--kill-on-bad-exit=0", "bash", "-c"]
    cmd += [wrapper, "task", PYTHON, str(REPO / script), *args, *data_args, "--wandb-mode", "disabled"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    ends = {int(t): (int(code), float(at)) for t, code, at in re.findall(r"task (\d) exit (\d+) at (\S+)", proc.stdout)}
    logs = [(tmp_path / f"task{t}.log").read_text() for t in (0, 1)]
    assert sorted(ends) == [0, 1] and [ends[0][0], ends[1][0]] == [2, 2], proc.stdout + proc.stderr + "".join(logs)
    assert abs(ends[0][1] - ends[1][1]) < 15
    line0 = [line for line in logs[0].splitlines() if "error: " in line][-1].split("error: ", 1)[1]
    assert f"error: rank 0: {line0}" in logs[1] and "Traceback" not in logs[1]


REQUEUED = [
    ("eval_linear.py", ["--epochs", "6", "--batch-size", "16"], "linear_state.pth"),
    ("eval_semisup.py", ["--percent", "50", "--epochs", "6", "--batch-size", "16"], "semisup_state.pth"),
    ("eval_svm.py", ["--protocol", "full", "--costs", "0.1,1", "--layers", "feature4,feature5"], "features"),
]


@pytest.mark.parametrize("script,args,progress", REQUEUED, ids=[s for s, _, _ in REQUEUED])
def test_requeued_evaluation_ends_as_an_uninterrupted_one(
    slurm_env, tmp_path, tiny_split_folder, script, args, progress
):
    """`scontrol requeue` (what a preempting scheduler does) once the evaluation has saved progress: the job runs
    again, resumes from its output folder and writes the results of a run never interrupted."""
    common = ["--pretrained", "random", "--arch", "resnet18", "--data", str(tiny_split_folder), "--image-size", "32"]
    common += ["--workers", "0", "--wandb-mode", "disabled", *args]
    out, jobs = tmp_path / "requeued", tmp_path / "jobs"
    launcher = [script, "--cpus-per-task", "2", "--mem-gb", "4", "--timeout-min", "10", "--job-dir", str(jobs / "%j")]
    proc = submit(slurm_env, [*launcher, "--", *common, "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    job_id = job_ids(proc.stdout)[0]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / progress).exists():
        time.sleep(0.2)
    requeue = subprocess.run(["scontrol", "requeue", job_id], env=slurm_env, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    assert not (out / "results.json").exists(), "the requeue must land before the evaluation ends"
    deadline, state = time.time() + 400, ""
    while time.time() < deadline:
        state = sacct_state(slurm_env, job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and (out / "results.json").exists():
            break
        time.sleep(1)
    assert state == "COMPLETED", state
    history = subprocess.run(
        ["sacct", "-j", job_id, "-D", "-X", "-n", "-o", "State"], env=slurm_env, capture_output=True
    )
    assert history.stdout.decode().split()[:1] == ["REQUEUED"], history.stdout  # it ran twice
    alone = run_script(script, [*common, "--output-dir", str(tmp_path / "alone")], tmp_path)
    assert alone.returncode == 0, alone.stderr

    def numbers(folder: Path) -> dict:
        found = json.loads((folder / "results.json").read_text())
        return {k: v for k, v in found.items() if isinstance(v, (int, float)) and "time" not in k and "_s" not in k}

    assert numbers(out) == numbers(tmp_path / "alone") and numbers(out)
