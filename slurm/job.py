"""The callable that submitit runs on every task: one entry script, with preemption-safe requeue."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import submitit

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("main_deepcluster.py", "main_deepclusterv2.py", "eval_linear.py", "eval_svm.py", "eval_semisup.py")


def load_script(name: str) -> ModuleType:
    """Import an entry script by file name; it must expose get_args_parser() and main(args)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(Path(name).stem)


def script_parser(module: ModuleType) -> argparse.ArgumentParser:
    from util.config import add_config_arg

    parser = argparse.ArgumentParser(Path(module.__file__).name, parents=[module.get_args_parser()])
    add_config_arg(parser)
    return parser


class ScriptJob(submitit.helpers.Checkpointable):
    """Runs `script argv` as one task of a (possibly multi-node) job.

    On timeout or preemption, submitit calls checkpoint(): the job is requeued as is, and the script resumes from
    the checkpoint in its --output-dir (every script resumes from its output folder), so no epoch is repeated or
    skipped in log.jsonl.
    """

    def __init__(self, script: str, argv: list[str]) -> None:
        self.script, self.argv = script, list(argv)

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or str(env.job_id)
        os.environ.update(
            RANK=str(env.global_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=env.hostnames[0] if env.hostnames else "127.0.0.1",
            MASTER_PORT=str(20000 + int("".join(ch for ch in job_id if ch.isdigit()) or 0) % 20000),
        )
        import torch

        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            torch.set_num_threads(int(cpus))
        module = load_script(self.script)
        from util.config import parse_with_config

        args = parse_with_config(script_parser(module), self.argv)
        try:
            module.main(args)
        except Exception as err:
            from util.abort import share_failure
            from util.errors import failure_line

            share_failure(*failure_line(err))  # the job's other tasks end with this task's line
            raise
        return getattr(args, "output_dir", "")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(ScriptJob(self.script, self.argv))
